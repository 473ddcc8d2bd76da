// Starts a real sandpool-server (target/debug/sandpool-server, built by
// test.sh) on a free port with a unique server id, waits for it by polling,
// and on stop SIGTERMs it, waits, and checks that no container labelled with
// its id is left on the engine.

import { spawn, execFile, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, writeFileSync, createWriteStream, existsSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { SandpoolClient, type ClientOptions, type TlsOptions } from "@sandpool/client";

const run = promisify(execFile);

/** clients/typescript (this file runs from build/test/helpers/). */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const REPO_ROOT = resolve(PACKAGE_DIR, "../..");
export const SERVER_BIN = process.env["SANDPOOL_SERVER_BIN"] ?? join(REPO_ROOT, "target/debug/sandpool-server");
/** The sandbox image the tests use (built by scripts/build-images.sh; never pulled). */
export const PYTHON_IMAGE = "sandpool/python:bookworm";

export interface ServerOptions {
  /** Bearer tokens the server accepts (auth off when empty). */
  tokens?: string[];
  /**
   * Serve TLS with these PEM files (`--tls-cert`, `--tls-key`, and with
   * `clientCa` `--tls-client-ca`: mutual TLS). `client` is the TLS option of
   * the clients that `client()` makes, the readiness probe's included.
   */
  tls?: { cert: string; key: string; clientCa?: string; client: TlsOptions };
  /** More TOML for the server's config (e.g. the operator's pools). */
  configExtra?: string;
  /** More environment for the server (e.g. OTEL_* variables). */
  env?: Record<string, string>;
}

export interface TestServer {
  address: string;
  serverId: string;
  logFile: string;
  process: ChildProcess;
  /** A client for this server (extra options merged in). */
  client(options?: ClientOptions): SandpoolClient;
  /** Suspends (SIGSTOP) or resumes (SIGCONT) the server process. */
  pause(): void;
  resume(): void;
  /** SIGTERM, wait for exit, then assert that no container of this server is left. */
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const addr = srv.address();
  srv.close();
  await once(srv, "close");
  if (addr === null || typeof addr === "string") {
    throw new Error("no port");
  }
  return addr.port;
}

export async function containersOf(serverId: string): Promise<string[]> {
  const { stdout } = await run("docker", ["ps", "-aq", "--filter", `label=sandpool.server=${serverId}`]);
  return stdout.split("\n").filter((l) => l.trim() !== "");
}

/** Polls `check` every `everyMs` until it returns true or `timeoutMs` passes. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 10_000,
  everyMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await check()) {
        return;
      }
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export async function startServer(options: ServerOptions = {}): Promise<TestServer> {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(`${SERVER_BIN} is missing: run \`cargo build -p sandpool-server\` at the repo root (test.sh does)`);
  }
  const dir = mkdtempSync(join(tmpdir(), "sandpool-ts-"));
  const port = await freePort();
  const serverId = `ts-${process.pid}-${Math.random().toString(16).slice(2, 10)}`;
  const config = join(dir, "server.toml");
  const tokens = options.tokens ?? [];
  writeFileSync(
    config,
    [
      "shutdown_grace = 2",
      tokens.length > 0 ? `[auth]\ntokens = [${tokens.map((t) => JSON.stringify(t)).join(", ")}]` : "",
      options.configExtra ?? "",
      "",
    ].join("\n"),
  );
  const logFile = join(dir, "server.log");
  const log = createWriteStream(logFile);
  // The server reads SANDPOOL_* variables: give it only ours.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SANDPOOL_")));
  const tlsFlags: string[] = [];
  if (options.tls !== undefined) {
    tlsFlags.push("--tls-cert", options.tls.cert, "--tls-key", options.tls.key);
    if (options.tls.clientCa !== undefined) {
      tlsFlags.push("--tls-client-ca", options.tls.clientCa);
    }
  }
  const proc = spawn(
    SERVER_BIN,
    ["--listen", `127.0.0.1:${port}`, "--config", config, "--server-id", serverId, ...tlsFlags],
    { env: { ...env, RUST_LOG: env["RUST_LOG"] ?? "info", ...options.env }, stdio: ["ignore", "pipe", "pipe"] },
  );
  // Two sources into one file: neither may end it for the other.
  proc.stdout?.pipe(log, { end: false });
  proc.stderr?.pipe(log, { end: false });
  proc.on("close", () => log.end());
  let exited = false;
  const exit = once(proc, "exit").then(([code, signal]) => {
    exited = true;
    return { code: code as number | null, signal: signal as NodeJS.Signals | null };
  });
  const address = `127.0.0.1:${port}`;
  const client = (extra: ClientOptions = {}) =>
    new SandpoolClient({
      address,
      timeoutMs: 10_000,
      ...(tokens[0] ? { token: tokens[0] } : {}),
      ...(options.tls === undefined ? {} : { tls: options.tls.client }),
      ...extra,
    });

  const probe = client({ timeoutMs: 1000 });
  try {
    await waitFor(
      "the server to answer ListPools",
      async () => {
        if (exited) {
          throw new Error(`sandpool-server exited early; log:\n${readFileSync(logFile, "utf8")}`);
        }
        await probe.listPools();
        return true;
      },
      30_000,
      50,
    );
  } catch (err) {
    proc.kill("SIGKILL");
    throw err;
  }

  return {
    address,
    serverId,
    logFile,
    process: proc,
    client,
    pause: () => void proc.kill("SIGSTOP"),
    resume: () => void proc.kill("SIGCONT"),
    stop: async () => {
      if (!exited) {
        proc.kill("SIGCONT");
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
        const { code, signal } = await exit;
        clearTimeout(timer);
        if (code !== 0) {
          throw new Error(
            `sandpool-server exited with ${code ?? signal} after SIGTERM; log:\n${readFileSync(logFile, "utf8").slice(-4000)}`,
          );
        }
      }
      const left = await containersOf(serverId);
      if (left.length > 0) {
        throw new Error(`containers left behind by ${serverId}: ${left.join(" ")}`);
      }
      // The log is kept only when something went wrong.
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let poolSeq = 0;
/** A pool name unique in this process. */
export function poolName(prefix: string): string {
  poolSeq += 1;
  return `${prefix}-${process.pid}-${poolSeq}`;
}
