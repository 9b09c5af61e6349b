/**
 * `npm run bench [-- section...]`: measures BEDS beside raw baselines taken in
 * the same run on the same services (only ratios from one run compare).
 * Sections: foundation. Env BENCH_N sets the event count.
 */
import { printFoundation, runFoundation } from "./foundation.ts"

const sections = process.argv.slice(2)
const want = (s: string) => sections.length === 0 || sections.includes(s)
const n = Number(process.env.BENCH_N ?? 100_000)

if (want("foundation")) printFoundation(await runFoundation(n, Number(process.env.BENCH_IN_FLIGHT ?? 2000)))
process.exit(0)
