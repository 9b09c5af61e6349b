/**
 * The demo's workload on the example domain: accounts opened, money moved at
 * every ack level, with the mistakes real clients make mixed in — repeated
 * message_ids, stale expected versions, bad payloads — each with the reply
 * it must get.
 */

export type Expectation = "ok" | "duplicate" | "VERSION_CONFLICT" | "SCHEMA_MISMATCH" | "UNKNOWN_TYPE" | "MISSING_KEY"

export interface DemoCommand {
  readonly depot: string
  readonly type: string
  readonly key: string
  readonly payload: unknown
  readonly id: string
  readonly ack: "none" | "append" | "full"
  readonly expect?: number | undefined
  /** What the engine must answer. */
  readonly expectation: Expectation
}

/** A small deterministic generator, so every run shows the same story. */
export const rng = (seed: number) => {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const OWNERS = ["Ada", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Alan", "Margaret", "Leslie", "Tony"]

/**
 * Opens `accounts` accounts, then `n` commands. Duplicates repeat an earlier
 * command verbatim (a client retry); conflicts send an expect that is
 * already stale; bad input is refused before anything is appended.
 */
export const workload = (run: string, accounts: number, n: number, seed = 42): ReadonlyArray<DemoCommand> => {
  const next = rng(seed)
  const pick = <T>(xs: ReadonlyArray<T>): T => xs[Math.floor(next() * xs.length)] as T
  const out: Array<DemoCommand> = []
  for (let a = 0; a < accounts; a++)
    out.push({
      depot: "accounts",
      type: "Opened",
      key: `acc-${a}`,
      payload: { owner: `${pick(OWNERS)} #${a}` },
      id: `${run}-open-${a}`,
      ack: "append",
      expectation: "ok",
    })
  const sent: Array<DemoCommand> = []
  for (let i = 0; i < n; i++) {
    const r = next()
    const ackRoll = next()
    const ack = ackRoll < 0.6 ? "append" : ackRoll < 0.85 ? "full" : "none"
    const key = `acc-${Math.floor(next() * accounts)}`
    let c: DemoCommand
    if (r < 0.03 && sent.length > 0) {
      const original = pick(sent)
      c = { ...original, ack: original.ack === "none" ? "append" : original.ack, expectation: "duplicate" }
    } else if (r < 0.05) {
      // Version 0 is stale for every account once it was opened.
      c = {
        depot: "accounts",
        type: "Deposited",
        key,
        payload: { amount: 100 },
        id: `${run}-c-${i}`,
        ack: "append",
        expect: 0,
        expectation: "VERSION_CONFLICT",
      }
    } else if (r < 0.06) {
      c = {
        depot: "accounts",
        type: "Deposited",
        key,
        payload: { amount: -5 },
        id: `${run}-c-${i}`,
        ack: "append",
        expectation: "SCHEMA_MISMATCH",
      }
    } else if (r < 0.065) {
      c = {
        depot: "accounts",
        type: "Stolen",
        key,
        payload: {},
        id: `${run}-c-${i}`,
        ack: "append",
        expectation: "UNKNOWN_TYPE",
      }
    } else if (r < 0.07) {
      c = {
        depot: "accounts",
        type: "Deposited",
        key: "",
        payload: { amount: 1 },
        id: `${run}-c-${i}`,
        ack: "append",
        expectation: "MISSING_KEY",
      }
    } else {
      const withdraw = next() < 0.35
      c = {
        depot: "accounts",
        type: withdraw ? "Withdrawn" : "Deposited",
        key,
        payload: { amount: 1 + Math.floor(next() * (withdraw ? 5_000 : 10_000)) },
        id: `${run}-c-${i}`,
        ack,
        expectation: "ok",
      }
      sent.push(c)
    }
    out.push(c)
  }
  return out
}
