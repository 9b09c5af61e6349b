/**
 * The MongoDB adapter's error boundary, without a server: which driver
 * errors are retryable, what the messages say, and what start-up reports
 * when no server answers.
 */
import { Effect, Exit } from "effect"
import { MongoError, MongoNetworkError, MongoServerError } from "mongodb"
import { describe, expect, it } from "vitest"
import { StoreError } from "../../src/errors.ts"
import * as Mongo from "../../src/readmodel/mongodb.ts"

const where = "MongoDB at mongodb://h:1/db"

const server = (fields: Record<string, unknown>, labels: ReadonlyArray<string> = []) => {
  const e = new MongoServerError({ message: String(fields.errmsg ?? "failed"), ...fields })
  for (const l of labels) e.addErrorLabel(l)
  return e
}

describe("MongoDB errors", () => {
  it("network errors are retryable and say the server cannot be reached", () => {
    const e = Mongo.classify("Loading 3 ldg_account document(s)", where, new MongoNetworkError("connection reset"))
    expect(e).toMatchObject({ code: "STORE_UNAVAILABLE", retryable: true })
    expect(e.message).toContain("Loading 3 ldg_account document(s): cannot reach MongoDB at mongodb://h:1/db")
    expect(e.message).toContain("BEDS_MONGO_URL")
  })

  it("NotWritablePrimary, stepdowns and retry labels are retryable; others are not", () => {
    for (const code of [10107, 13435, 11602, 189, 91, 262])
      expect(Mongo.classify("Committing", where, server({ code })).retryable, String(code)).toBe(true)
    for (const label of ["RetryableWriteError", "TransientTransactionError", "UnknownTransactionCommitResult"])
      expect(Mongo.classify("Committing", where, server({ code: 1 }, [label])).retryable, label).toBe(true)
    const dup = Mongo.classify(
      "Committing 2 writes to ldg_account",
      where,
      server({ code: 11000, errmsg: "E11000 dup" }),
    )
    expect(dup).toMatchObject({ code: "STORE_FAILED", retryable: false })
    expect(dup.message).toBe(`Committing 2 writes to ldg_account failed on ${where}: E11000 dup`)
    expect(Mongo.classify("x", where, new MongoError("odd")).retryable).toBe(false)
    const own = new StoreError({ code: "CORRUPT", message: "kept", retryable: false })
    expect(Mongo.classify("x", where, own)).toBe(own)
  })

  it("keeps passwords out of messages", () => {
    expect(Mongo.redact("mongodb://beds:s3cret@db.example:27017/?tls=true")).toBe(
      "mongodb://***@db.example:27017/?tls=true",
    )
  })

  it("start-up fails as unavailable, naming the server, when nothing answers", async () => {
    const exit = await Effect.runPromiseExit(
      Effect.scoped(
        Mongo.backend({ url: "mongodb://127.0.0.1:9/?directConnection=true", database: "beds", connectTimeoutMs: 300 }),
      ),
    )
    expect(Exit.isFailure(exit)).toBe(true)
    const e = Exit.isFailure(exit)
      ? (exit.cause.reasons.find((r) => r._tag === "Fail") as { error: StoreError }).error
      : undefined
    expect(e).toMatchObject({ code: "STORE_UNAVAILABLE", retryable: true })
    expect(e?.message).toContain(
      "Connecting: cannot reach MongoDB at mongodb://127.0.0.1:9/?directConnection=true/beds",
    )
  })

  it("refuses an unusable url or database name before connecting", async () => {
    const bad = async (url: string, database: string) => {
      const exit = await Effect.runPromiseExit(Effect.scoped(Mongo.backend({ url, database, connectTimeoutMs: 300 })))
      return Exit.isFailure(exit)
        ? (exit.cause.reasons.find((r) => r._tag === "Fail") as { error: StoreError }).error
        : undefined
    }
    expect((await bad("http://nope", "beds"))?.message).toContain("not a connection string")
    expect((await bad("mongodb://127.0.0.1:9", "has space"))?.message).toContain(
      'database name "has space" is not usable',
    )
  })
})
