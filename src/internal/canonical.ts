/**
 * A value as JSON with object keys sorted at every depth, so two equal rows
 * compare equal whatever order their fields were written in.
 */
export const canonical = (value: unknown): string =>
  JSON.stringify(value, (_k, x: unknown) =>
    x !== null && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(
          Object.entries(x as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        )
      : x,
  ) ?? "undefined"
