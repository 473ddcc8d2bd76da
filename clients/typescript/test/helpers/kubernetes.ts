// The Kubernetes test API server (tests/k8s-apiserver, binary
// k8s-testserver) as a process: each pod it is asked for runs as a real
// Docker container, so a sandpool server whose Kubernetes pools go there
// runs real code. It is a stand-in for a cluster, which cannot run on the
// test machines; its fidelity is checked with kubectl in its own suite.

import { spawn, execFile } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { createWriteStream, existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

import { REPO_ROOT } from "./server.js";

const run = promisify(execFile);

export const K8S_TESTSERVER_BIN = join(process.env["CARGO_TARGET_DIR"] ?? join(REPO_ROOT, "target"), "debug/k8s-testserver");

export interface ApiServer {
  url: string;
  kubeconfig: string;
  /** `[kubernetes]` config for a sandpool server whose pools go here. */
  config: string;
  /** `namespace/name` of the pods of sandpool server `serverId`, as this API server's Docker containers record them. */
  pods(serverId: string): Promise<string[]>;
  /** SIGTERM: it removes every container it created, then exits. */
  stop(): Promise<void>;
}

export async function startApiServer(namespace: string): Promise<ApiServer> {
  if (!existsSync(K8S_TESTSERVER_BIN)) {
    throw new Error(`${K8S_TESTSERVER_BIN} is missing: run \`cargo build -p sandpool-k8s-testserver\` (test.sh does)`);
  }
  const dir = mkdtempSync(join(tmpdir(), "sandpool-ts-k8s-"));
  const kubeconfig = join(dir, "kubeconfig");
  const instance = `ts-k8s-${process.pid}-${Math.random().toString(16).slice(2, 10)}`;
  const logFile = join(dir, "k8s-testserver.log");
  const log = createWriteStream(logFile);
  const proc = spawn(K8S_TESTSERVER_BIN, ["--kubeconfig", kubeconfig, "--namespace", namespace, "--instance-id", instance], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  proc.stderr?.pipe(log);
  const exited = once(proc, "exit");
  // It prints its URL alone on stdout once it serves.
  const lines = createInterface({ input: proc.stdout! });
  const url = await Promise.race([
    once(lines, "line").then(([line]) => String(line).trim()),
    exited.then(() => ""),
    // unref: a timer left behind must not keep the test process alive.
    new Promise<string>((r) => setTimeout(() => r(""), 60_000).unref()),
  ]);
  if (!url.startsWith("http")) {
    proc.kill("SIGKILL");
    throw new Error(`the test API server did not start:\n${readFileSync(logFile, "utf8")}`);
  }
  return {
    url,
    kubeconfig,
    config: `[kubernetes]\nkubeconfig = ${JSON.stringify(kubeconfig)}\nnamespace = ${JSON.stringify(namespace)}\n`,
    pods: async (serverId: string) => {
      const { stdout } = await run("docker", [
        "ps",
        "-a",
        "--filter",
        `label=k8s-testserver.instance=${instance}`,
        "--filter",
        `label=k8s-testserver.label.sandpool.server=${serverId}`,
        "--format",
        '{{.Label "k8s-testserver.pod"}}',
      ]);
      return stdout.split("\n").filter((l) => l.trim() !== "");
    },
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 60_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}
