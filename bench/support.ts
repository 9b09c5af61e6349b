/**
 * Benchmark helpers: a progress bar on terminals, percentiles, and a loop
 * that keeps N operations in flight.
 */
import cliProgress from "cli-progress"
import * as mariadb from "mariadb"

/** Drops a throw-away database of the bench on the local MariaDB (root, no password), before and after a section. */
export const dropDatabase = async (database: string): Promise<void> => {
  const admin = await mariadb.createConnection({ host: "127.0.0.1", user: "root" })
  try {
    await admin.query(`DROP DATABASE IF EXISTS \`${database}\``)
  } finally {
    await admin.end()
  }
}

export const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0
    ? Number.NaN
    : (sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number)

export const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : "n/a"

/** A progress bar on a terminal; a line every few seconds otherwise (CI logs). */
export const progress = (label: string, total: number) => {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${label.padEnd(28)} [{bar}] {percentage}% {value}/{total} {rate}/s eta {eta}s`,
        hideCursor: true,
        stream: process.stderr,
      },
      cliProgress.Presets.shades_classic,
    )
    const start = performance.now()
    bar.start(total, 0, { rate: 0 })
    return {
      update: (n: number) => bar.update(n, { rate: fmt(n / ((performance.now() - start) / 1000)) }),
      stop: () => bar.stop(),
    }
  }
  let last = 0
  const start = performance.now()
  return {
    update: (n: number) => {
      const now = performance.now()
      if (now - last > 3000) {
        last = now
        process.stderr.write(`${label}: ${n}/${total} (${fmt(n / ((now - start) / 1000))}/s)\n`)
      }
    },
    stop: () => undefined,
  }
}

/**
 * Runs `op(i)` for i in [0, total) with at most `inFlight` pending, for
 * callback APIs: `op(i, done)` calls `done(error?)` once. No promise per
 * operation, so the driver costs the engine next to nothing.
 */
export const driveCallbacks = (
  total: number,
  inFlight: number,
  op: (i: number, done: (error?: Error) => void) => void,
  onProgress?: (done: number) => void,
): Promise<void> =>
  new Promise((resolve, reject) => {
    let next = 0
    let done = 0
    let failed = false
    const start = (): void => {
      const i = next++
      op(i, (error) => {
        if (failed) return
        if (error !== undefined) {
          failed = true
          reject(error)
          return
        }
        done++
        if (onProgress && done % 1000 === 0) onProgress(done)
        if (done === total) resolve()
        else if (next < total) start()
      })
    }
    if (total === 0) resolve()
    for (let k = 0; k < Math.min(inFlight, total); k++) start()
  })

export const summarize = (latencies: Float64Array) => {
  const sorted = Array.from(latencies).sort((a, b) => a - b)
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) }
}

export const peakRssMb = () => process.resourceUsage().maxRSS / 1024

/**
 * Fills beds_event from `rows` (its 13 columns each) with multi-row INSERTs
 * of 2,000 rows, 10 statements per transaction, on one connection; returns
 * what the generator returned and the rows inserted per second.
 */
export const fillEvents = async <R>(
  settings: mariadb.ConnectionConfig,
  total: number,
  rows: Generator<ReadonlyArray<unknown>, R>,
): Promise<{ readonly result: R; readonly perSec: number }> => {
  const ROWS = 2000
  const conn = await mariadb.createConnection({ ...settings, bigIntAsNumber: true })
  try {
    const bar = progress("filling beds_event", total)
    const t0 = performance.now()
    let params: Array<unknown> = []
    let count = 0
    let statements = 0
    const flush = async () => {
      if (count === 0) return
      if (statements % 10 === 0) await conn.beginTransaction()
      await conn.query(
        `INSERT INTO beds_event (depot, part, off, id, type, \`key\`, version, payload, time, parent, root, message_id, metadata) VALUES ${Array.from({ length: count }, () => "(?,?,?,?,?,?,?,?,?,?,?,?,?)").join(",")}`,
        params,
      )
      statements++
      if (statements % 10 === 0) await conn.commit()
      params = []
      count = 0
    }
    let done = 0
    let step = rows.next()
    while (step.done !== true) {
      params.push(...step.value)
      count++
      done++
      if (count === ROWS) {
        await flush()
        bar.update(done)
      }
      step = rows.next()
    }
    await flush()
    if (statements % 10 !== 0) await conn.commit()
    bar.update(done)
    bar.stop()
    return { result: step.value, perSec: done / ((performance.now() - t0) / 1000) }
  } finally {
    await conn.end()
  }
}
