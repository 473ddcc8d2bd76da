// TLS and mutual TLS against the real server, with certificates made for the
// test by the openssl CLI: a CA, a server certificate for localhost and
// 127.0.0.1, and client certificates for alice and bob. Encrypted calls
// work, plaintext ones fail fast with Unavailable, and with client
// certificates each certificate is an identity that owns its leases.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { ConnectError } from "@connectrpc/connect";
import {
  Cancelled,
  Code,
  InvalidArgument,
  LeaseLost,
  SandpoolClient,
  Unavailable,
  mapError,
  mapLeaseError,
  type TlsOptions,
} from "@sandpool/client";

import { PYTHON_IMAGE, poolName, startServer, type TestServer } from "./helpers/server.js";

const run = promisify(execFile);

async function openssl(dir: string, ...args: string[]): Promise<void> {
  await run("openssl", args, { cwd: dir });
}

/**
 * ca.pem/.key, server.pem/.key (localhost, 127.0.0.1) and NAME.pem/.key for
 * each client, all signed by the CA (P-256 keys: quick to make).
 */
async function makeCertificates(dir: string, clients: string[]): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(dir, "req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=sandpool-test-ca");
  const sign = async (name: string, ext: string) => {
    await openssl(dir, "req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    writeFileSync(join(dir, `${name}.ext`), ext);
    await openssl(dir, "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-out", `${name}.pem`, "-days", "1", "-extfile", `${name}.ext`);
  };
  await sign("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  for (const client of clients) {
    await sign(client, "extendedKeyUsage=clientAuth\n");
  }
}

/** Measures how long `fn` takes to reject, and with what. */
async function rejection(fn: () => Promise<unknown>): Promise<{ err: unknown; ms: number }> {
  const t0 = Date.now();
  try {
    await fn();
  } catch (err) {
    return { err, ms: Date.now() - t0 };
  }
  assert.fail("the call succeeded");
}

test("connection failures map to Unavailable; server statuses and aborts keep their code", () => {
  const nodeError = (code: string) => Object.assign(new Error(code), { code });
  // What the HTTP/2 transport reports when TLS fails or the peer hangs up.
  for (const [code, cause] of [
    [Code.Internal, nodeError("ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED")],
    [Code.Internal, nodeError("UNABLE_TO_VERIFY_LEAF_SIGNATURE")],
    [Code.Internal, nodeError("ERR_TLS_CERT_ALTNAME_INVALID")],
    [Code.Aborted, nodeError("ECONNRESET")],
  ] as const) {
    const mapped = mapError(new ConnectError("transport", code, undefined, undefined, cause));
    assert.ok(mapped instanceof Unavailable, `${cause.message}: ${String(mapped)}`);
  }
  const closed = mapError(new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled));
  assert.ok(closed instanceof Unavailable, String(closed));
  // A server's INTERNAL status, and the caller's own abort, are left alone.
  assert.ok(!(mapError(new ConnectError("boom", Code.Internal)) instanceof Unavailable));
  const abort = new AbortController();
  abort.abort();
  assert.ok(mapError(ConnectError.from(abort.signal.reason)) instanceof Cancelled);
});

describe("tls", () => {
  let dir: string;
  let ca: Buffer;
  const tlsOf = (identity?: string, servername?: string): TlsOptions => ({
    ca,
    ...(identity === undefined
      ? {}
      : { cert: readFileSync(join(dir, `${identity}.pem`)), key: readFileSync(join(dir, `${identity}.key`)) }),
    ...(servername === undefined ? {} : { servername }),
  });
  const warmPool = async (server: TestServer): Promise<string> => {
    const pool = poolName("tls");
    await server
      .client()
      .createPool({ name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 2 }, { waitReady: true, timeoutMs: 30_000 });
    return pool;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "sandpool-ts-tls-"));
    await makeCertificates(dir, ["alice", "bob"]);
    ca = readFileSync(join(dir, "ca.pem"));
  });

  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe("server TLS", () => {
    let server: TestServer;
    let pool: string;

    before(async () => {
      server = await startServer({
        tls: { cert: join(dir, "server.pem"), key: join(dir, "server.key"), client: tlsOf() },
      });
      pool = await warmPool(server);
    });

    after(async () => {
      await server?.stop();
    });

    test("a client that trusts the CA acquires, runs and releases, by name and by IP", async () => {
      const port = server.address.split(":")[1];
      const clients = [
        // The certificate's IP SAN.
        server.client(),
        new SandpoolClient({ address: `https://${server.address}`, tls: { ca }, timeoutMs: 10_000 }),
        // Its DNS SAN.
        new SandpoolClient({ address: `localhost:${port}`, tls: { ca }, timeoutMs: 10_000 }),
        // Connect to the IP, check the name.
        server.client({ tls: tlsOf(undefined, "localhost") }),
      ];
      for (const [i, client] of clients.entries()) {
        const session = await client.acquire(pool, { waitMs: 10_000 });
        try {
          const r = await session.runCollect("print(1)");
          assert.equal(r.stdout, "1\n", `client ${i}`);
          assert.equal(r.exitCode, 0);
        } finally {
          await session.release();
        }
      }
      assert.equal((await server.client().getStats(pool)).activeLeases, 0);
    });

    test("plaintext and untrusting clients fail fast with Unavailable", async () => {
      const cases: [string, SandpoolClient][] = [
        ["plaintext", server.client({ tls: false, timeoutMs: 5_000 })],
        ["system roots", server.client({ tls: true, timeoutMs: 5_000 })],
        ["wrong server name", server.client({ tls: tlsOf(undefined, "sandpool.example"), timeoutMs: 5_000 })],
      ];
      for (const [what, client] of cases) {
        const { err, ms } = await rejection(() => client.listPools());
        assert.ok(err instanceof Unavailable, `${what}: ${String(err)}`);
        assert.ok(ms < 4_000, `${what}: failed after ${ms} ms, not at once`);
      }
    });
  });

  describe("mutual TLS", () => {
    let server: TestServer;
    let pool: string;

    before(async () => {
      // Each certificate is a tenant of its own, and a pool a tenant creates
      // is its own: the pool alice and bob share is the operator's.
      pool = poolName("tls");
      server = await startServer({
        tls: {
          cert: join(dir, "server.pem"),
          key: join(dir, "server.key"),
          clientCa: join(dir, "ca.pem"),
          client: tlsOf("alice"),
        },
        configExtra: `[[pools]]\nname = "${pool}"\nlanguage = "python"\nimage = "${PYTHON_IMAGE}"\nmin_pool_size = 1\nmax_pool_size = 2\n`,
      });
    });

    after(async () => {
      await server?.stop();
    });

    test("no client certificate, no service", async () => {
      const anonymous = server.client({ tls: tlsOf(), timeoutMs: 5_000 });
      const { err, ms } = await rejection(() => anonymous.listPools());
      assert.ok(err instanceof Unavailable, String(err));
      assert.ok(ms < 4_000, `failed after ${ms} ms, not at once`);
    });

    test("a lease belongs to the certificate that acquired it", async () => {
      const alice = server.client();
      const bob = server.client({ tls: tlsOf("bob") });
      assert.ok((await bob.listPools()).some((p) => p.name === pool));
      const session = await alice.acquire(pool, { waitMs: 10_000 });
      try {
        assert.equal((await session.runCollect("print(1)")).stdout, "1\n");
        // Not bob's to run on...
        const ran = await rejection(async () => {
          for await (const _ of bob.sessions.run({
            leaseId: session.leaseId,
            program: { case: "code", value: { source: { case: "text", value: "print(2)" } } },
          })) {
            // nothing: the call must fail
          }
        });
        const lost = mapLeaseError(ran.err, session.leaseId);
        assert.ok(lost instanceof LeaseLost, String(lost));
        assert.equal(lost.code, Code.NotFound);
        // ...nor to release.
        const released = await rejection(() => bob.sessions.release({ leaseId: session.leaseId }, { timeoutMs: 10_000 }));
        assert.ok(mapLeaseError(released.err, session.leaseId) instanceof LeaseLost, String(released.err));
        // Bob's own lease works; alice's is still hers.
        const mine = await bob.acquire(pool, { waitMs: 10_000 });
        try {
          assert.equal((await mine.runCollect("print(3)")).stdout, "3\n");
        } finally {
          await mine.release();
        }
        assert.equal((await session.runCollect("print(1)")).stdout, "1\n");
      } finally {
        await session.release();
      }
    });
  });
});

test("asking for TLS with an http:// address is an error, never plaintext", () => {
  assert.throws(
    () => new SandpoolClient({ address: "http://127.0.0.1:1", tls: true }),
    (err: unknown) => err instanceof InvalidArgument && /https/.test(String(err)),
  );
});
