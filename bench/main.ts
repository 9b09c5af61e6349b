/**
 * `npm run bench [-- section...]`: measures BEDS beside raw baselines taken in
 * the same run on the same services (only ratios from one run compare).
 * Sections: foundation, amqp, embedded, replay, lineage. Env BENCH_N sets the
 * event count (default 100,000; 300,000 for the foundation, whose first
 * 10,000 events open the accounts), BENCH_REBUILD and BENCH_REPLAY the depot
 * sizes.
 */
import { printAmqp, runAmqp } from "./amqp.ts"
import { printEmbedded, runEmbedded } from "./embedded.ts"
import { printFoundation, runFoundation } from "./foundation.ts"

const sections = process.argv.slice(2)
const want = (s: string) => sections.length === 0 || sections.includes(s)
const n = Number(process.env.BENCH_N ?? 100_000)

if (want("foundation")) {
  const inFlight = process.env.BENCH_IN_FLIGHT
  // Long enough that opening the 10,000 accounts and warming up are a small part of the run.
  const events = Number(process.env.BENCH_N ?? 300_000)
  printFoundation(await runFoundation(events, inFlight === undefined ? undefined : Number(inFlight)))
}
if (want("amqp"))
  printAmqp(
    await runAmqp(
      Math.min(n, 60_000),
      Number(process.env.BENCH_AMQP_IN_FLIGHT ?? 256),
      Number(process.env.BENCH_ROUNDS ?? 3),
    ),
  )
if (want("embedded"))
  printEmbedded(
    await runEmbedded(n, Number(process.env.BENCH_IN_FLIGHT ?? 2000), Number(process.env.BENCH_REBUILD ?? 1_000_000)),
  )
if (want("replay")) await (await import("./replay.ts")).benchReplay()
if (want("lineage")) await (await import("./lineage.ts")).benchLineage()
process.exit(0)
