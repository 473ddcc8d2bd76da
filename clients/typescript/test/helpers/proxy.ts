// A TCP proxy that can go silent, for the keepalive tests (leases and owned
// pools).

import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";

/** A listener on a free port of 127.0.0.1, and the host and port of `target` ("host:port"). */
async function listenFor(target: string): Promise<{ server: Server; address: string; host: string; port: number }> {
  const at = target.lastIndexOf(":");
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const addr = server.address();
  if (addr === null || typeof addr === "string") {
    throw new Error("no port");
  }
  return { server, address: `127.0.0.1:${addr.port}`, host: target.slice(0, at), port: Number(target.slice(at + 1)) };
}

/**
 * A TCP proxy from 127.0.0.1 to `target`. After `blackhole()` it forwards
 * nothing more in either direction and accepts new connections without
 * forwarding them, yet closes nothing (no FIN, no RST): a network that
 * silently drops everything.
 */
export class BlackholeProxy {
  private silent = false;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly address: string,
  ) {}

  static async start(target: string): Promise<BlackholeProxy> {
    const { server, address, host, port } = await listenFor(target);
    const proxy = new BlackholeProxy(server, address);
    server.on("connection", (conn) => proxy.accept(conn, host, port));
    return proxy;
  }

  blackhole(): void {
    this.silent = true;
    for (const s of this.sockets) {
      s.pause();
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) {
      s.destroy();
    }
    this.server.close();
    await once(this.server, "close");
  }

  private keep(s: Socket): void {
    this.sockets.add(s);
    s.on("error", () => undefined);
    s.on("close", () => this.sockets.delete(s));
  }

  private accept(conn: Socket, host: string, port: number): void {
    this.keep(conn);
    if (this.silent) {
      conn.pause(); // held open, never forwarded
      return;
    }
    const upstream = connect(port, host);
    this.keep(upstream);
    this.pump(conn, upstream);
    this.pump(upstream, conn);
  }

  private pump(src: Socket, dst: Socket): void {
    src.on("data", (data) => {
      if (this.silent) {
        src.pause(); // hold the data and the connection
        return;
      }
      dst.write(data);
    });
    src.on("end", () => {
      if (!this.silent) {
        dst.end();
      }
    });
  }
}

/**
 * A TCP proxy from 127.0.0.1 to `target` whose `cut()` resets every open
 * connection (a network blip, a load balancer restarting); while `refusing`
 * it closes new connections at once (an outage).
 */
export class CutProxy {
  refusing = false;
  forwarded = 0;
  private readonly open = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly address: string,
  ) {}

  static async start(target: string): Promise<CutProxy> {
    const { server, address, host, port } = await listenFor(target);
    const proxy = new CutProxy(server, address);
    server.on("connection", (conn) => proxy.accept(conn, host, port));
    return proxy;
  }

  cut(): void {
    for (const s of this.open) {
      s.resetAndDestroy();
    }
    this.open.clear();
  }

  async close(): Promise<void> {
    this.cut();
    this.server.close();
    await once(this.server, "close");
  }

  private accept(conn: Socket, host: string, port: number): void {
    conn.on("error", () => undefined);
    if (this.refusing) {
      conn.resetAndDestroy();
      return;
    }
    const upstream = connect(port, host);
    upstream.on("error", () => undefined);
    this.forwarded += 1;
    for (const s of [conn, upstream]) {
      this.open.add(s);
      s.on("close", () => this.open.delete(s));
    }
    conn.pipe(upstream);
    upstream.pipe(conn);
  }
}
