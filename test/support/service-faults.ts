/**
 * Real, bounded faults of the shared services, for *.fault.test.ts files
 * only: close an engine's AMQP connection, restart MariaDB, restart the
 * RabbitMQ application. Every fault ends by itself; `restoreServices` (run
 * it in afterAll and after every fault) brings back whatever is not
 * listening, and a last synchronous attempt runs when the process exits, so
 * a failing or interrupted test never leaves a service down for the people
 * who share it.
 */
import { execFile, spawnSync } from "node:child_process"
import * as net from "node:net"

const HOST = "127.0.0.1"
export const MARIADB_PORT = 3306
export const AMQP_PORT = 5672

export const listening = (port: number, timeoutMs = 1000): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

export interface Shell {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs a command with a hard time limit; never throws. */
export const sh = (cmd: string, args: ReadonlyArray<string>, timeoutMs = 30_000): Promise<Shell> =>
  new Promise((resolve) => {
    execFile(cmd, [...args], { timeout: timeoutMs, maxBuffer: 8 << 20 }, (err, stdout, stderr) =>
      resolve({
        code: err === null ? 0 : typeof err.code === "number" ? err.code : -1,
        stdout: String(stdout),
        stderr: String(stderr),
      }),
    )
  })

/** Polls `ok` until it holds or `timeoutMs` passed; returns whether it held. */
export const waitUntil = async (ok: () => Promise<boolean>, timeoutMs: number, everyMs = 100): Promise<boolean> => {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    if (await ok()) return true
    await sleep(everyMs)
  }
  return ok()
}

// ---------------------------------------------------------------------------
// RabbitMQ connections

/**
 * Force-closes the AMQP connections whose client-provided name is `name`
 * (the engine's ingress calls itself `beds-ingress@<pid>`); returns how many
 * were closed. Only connections with exactly that name are touched.
 */
export const closeConnections = async (name: string): Promise<number> => {
  const listed = await sh("rabbitmqctl", ["list_connections", "pid", "client_properties", "-q"], 20_000)
  if (listed.code !== 0) throw new Error(`rabbitmqctl list_connections failed: ${listed.stderr}`)
  const pids = listed.stdout
    .split("\n")
    .filter((l) => l.includes(`{"connection_name","${name}"}`))
    .map((l) => l.split("\t")[0] as string)
    .filter((p) => p.startsWith("<"))
  let closed = 0
  for (const pid of pids) {
    const r = await sh("rabbitmqctl", ["close_connection", pid, "test"], 20_000)
    if (r.code === 0) closed++
  }
  return closed
}

/** Ready and unacknowledged messages of the queues whose name starts with `prefix`. */
export const queueDepths = async (
  prefix: string,
): Promise<Map<string, { readonly ready: number; readonly unacked: number }>> => {
  const r = await sh("rabbitmqctl", ["list_queues", "name", "messages_ready", "messages_unacknowledged", "-q"], 20_000)
  const out = new Map<string, { ready: number; unacked: number }>()
  if (r.code !== 0) throw new Error(`rabbitmqctl list_queues failed: ${r.stderr}`)
  for (const line of r.stdout.split("\n")) {
    const [name, ready, unacked] = line.split("\t")
    if (name?.startsWith(prefix) === true) out.set(name, { ready: Number(ready), unacked: Number(unacked) })
  }
  return out
}

// ---------------------------------------------------------------------------
// Restarts

let mariaDbStopped = false
let rabbitStopped = false

const mariaDbRunning = async () => (await sh("pidof", ["mariadbd"], 5000)).code === 0

const startMariaDb = async () => {
  // A server still shutting down would make --oknodo a no-op, and then exit.
  await waitUntil(async () => !(await mariaDbRunning()), 60_000, 200)
  await sh("mkdir", ["-p", "/run/mysqld"])
  await sh("chown", ["mysql:mysql", "/run/mysqld"])
  await sh("start-stop-daemon", ["--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"])
  const up = await waitUntil(
    async () => (await sh("mariadb-admin", ["-h127.0.0.1", "-uroot", "ping"], 5000)).code === 0,
    90_000,
    200,
  )
  if (!up) throw new Error("MariaDB did not come back on 127.0.0.1:3306 within 90 s")
  mariaDbStopped = false
}

/**
 * Shuts MariaDB down cleanly, keeps it down for `downMs`, starts it again
 * and waits until it answers. Returns the time it was unreachable.
 */
export const restartMariaDb = async (downMs: number): Promise<number> => {
  const t0 = performance.now()
  mariaDbStopped = true
  try {
    const r = await sh("mariadb-admin", ["-uroot", "shutdown"], 60_000)
    if (r.code !== 0) throw new Error(`mariadb-admin shutdown failed: ${r.stderr}`)
    await waitUntil(async () => !(await listening(MARIADB_PORT)), 30_000)
    await sleep(downMs)
  } finally {
    await startMariaDb()
  }
  return performance.now() - t0
}

const startRabbit = async () => {
  await sh("rabbitmqctl", ["start_app"], 120_000)
  const up = await waitUntil(() => listening(AMQP_PORT), 60_000, 200)
  if (!up) throw new Error("RabbitMQ did not come back on 127.0.0.1:5672 within 60 s")
  await sh("rabbitmqctl", ["await_startup"], 60_000)
  rabbitStopped = false
}

/** Stops the RabbitMQ application (every connection drops), keeps it down for `downMs`, starts it again. */
export const restartRabbit = async (downMs: number): Promise<number> => {
  const t0 = performance.now()
  rabbitStopped = true
  try {
    const r = await sh("rabbitmqctl", ["stop_app"], 120_000)
    if (r.code !== 0) throw new Error(`rabbitmqctl stop_app failed: ${r.stderr}`)
    await sleep(downMs)
  } finally {
    await startRabbit()
  }
  return performance.now() - t0
}

/** Brings back MariaDB and RabbitMQ if this process stopped them, or if they do not answer. */
export const restoreServices = async (): Promise<void> => {
  const errors: Array<string> = []
  if (mariaDbStopped || !(await listening(MARIADB_PORT)))
    await startMariaDb().catch((e: Error) => errors.push(e.message))
  if (rabbitStopped || !(await listening(AMQP_PORT))) await startRabbit().catch((e: Error) => errors.push(e.message))
  if (errors.length > 0) throw new Error(errors.join("; "))
}

process.on("exit", () => {
  // Last resort when the test process ends in the middle of a fault.
  if (mariaDbStopped)
    spawnSync("start-stop-daemon", ["--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"])
  if (rabbitStopped) spawnSync("rabbitmqctl", ["start_app"], { timeout: 60_000 })
})
