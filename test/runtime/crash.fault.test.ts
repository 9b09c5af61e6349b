/**
 * The embedded engine is killed with SIGKILL while it group-commits, again
 * and again; after every restart each command it acknowledged is in the
 * depot exactly once, at the position it acknowledged.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { type EngineProcess, kill, startEngine } from "../support/engine-process.ts"

const KILLS = 8
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-crash-"))
afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }))

interface Ack {
  readonly id: string
  readonly offset: number
  readonly partition: number
}

const env = { BEDS_ENV: "", BEDS__ENGINE__DATA_DIR: dataDir }

const send = (e: EngineProcess, message: string, amount: number, ack = "append") =>
  (e.child.stdin as NodeJS.WritableStream).write(
    `${JSON.stringify({ depot: "accounts", type: "Deposited", key: `acc-${amount % 50}`, payload: { amount }, message_id: message, ack, correlation_id: message })}\n`,
  )

const acksOf = (e: EngineProcess, into: Map<string, Ack>) => {
  for (const line of e.lines) {
    try {
      const r = JSON.parse(line) as { ok: boolean; correlation_id?: string } & Ack
      if (r.ok && r.correlation_id) into.set(r.correlation_id, { id: r.id, offset: r.offset, partition: r.partition })
    } catch {
      // A line cut by the kill was never a complete reply.
    }
  }
}

describe("embedded engine under SIGKILL", () => {
  it(`keeps every acknowledged command exactly once across ${KILLS} kills during group commit`, async () => {
    const acked = new Map<string, Ack>()
    let sent = 0
    for (let k = 0; k < KILLS; k++) {
      const engine = await startEngine(env)
      // Feed commands as fast as the pipe takes them, and kill mid-stream.
      const feeding = (async () => {
        for (let i = 0; i < 4000 && engine.child.exitCode === null; i++) {
          send(engine, `k${k}-${i}`, sent++ + 1)
          if (i % 200 === 0) await new Promise((r) => setImmediate(r))
        }
      })()
      await new Promise((r) => setTimeout(r, 150 + Math.floor(Math.random() * 350)))
      await kill(engine)
      await feeding
      acksOf(engine, acked)
    }
    console.log(`crash test: ${sent} commands sent over ${KILLS} lives, ${acked.size} acknowledged before the kills`)
    expect(acked.size).toBeGreaterThan(KILLS * 10)

    // Last life: every acknowledged command answers as a duplicate at its acknowledged position.
    const engine = await startEngine(env)
    for (const id of acked.keys()) send(engine, id, 1)
    ;(engine.child.stdin as NodeJS.WritableStream).end()
    expect(await engine.exited).toBe(0)
    const replies = new Map<string, { duplicate: boolean; id: string }>()
    for (const line of engine.lines) {
      const r = JSON.parse(line) as { correlation_id: string; duplicate: boolean; id: string; ok: boolean }
      replies.set(r.correlation_id, r)
    }
    const wrong = [...acked].filter(([m, a]) => !replies.get(m)?.duplicate || replies.get(m)?.id !== a.id)
    expect(wrong).toEqual([])
    // And the depot's offsets are gapless: the acknowledged positions of a partition never skip.
    const byPartition = new Map<number, Set<number>>()
    for (const a of acked.values())
      byPartition.set(a.partition, (byPartition.get(a.partition) ?? new Set()).add(a.offset))
    for (const offsets of byPartition.values()) expect(new Set(offsets).size).toBe(offsets.size)
  }, 180_000)
})
