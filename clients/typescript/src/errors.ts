// Errors: every failed call rejects with a SandpoolError subclass chosen by
// the server's reason (the generated ErrorReason enum of errors.proto), or by
// the gRPC status code when it gave none, carrying the standard rich error
// details the server sends (bad-request field, retry delay, precondition
// violations).

import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

import { ErrorReason } from "./gen/sandpool/v1/errors_pb.js";
import { LeaseState } from "./gen/sandpool/v1/session_pb.js";

export { Code, ErrorReason };

/** A google.rpc.PreconditionFailure violation. */
export interface PreconditionViolation {
  /** e.g. "LEASE_ENDED", "POOL_CLOSED", "CONTAINER_GONE". */
  type: string;
  /** What it is about: a lease id, a pool name, a path. */
  subject: string;
  description: string;
}

/** A google.rpc.BadRequest field violation. */
export interface FieldViolation {
  /** The field at fault, e.g. "config.min_pool_size". */
  field: string;
  description: string;
}

/** A google.rpc.ErrorInfo: why, in a machine-readable form. */
export interface ErrorInfo {
  /** e.g. "LEASE_NOT_FOUND", "LEASE_ENDED". */
  reason: string;
  /** "sandpool" for the server's own reasons. */
  domain: string;
  /** e.g. { lease_id: "..." }. */
  metadata: Record<string, string>;
}

/** Rich error details decoded from the status. */
export interface ErrorDetails {
  /** google.rpc.ErrorInfo, when the server sent one. */
  errorInfo?: ErrorInfo;
  fieldViolations: FieldViolation[];
  preconditionViolations: PreconditionViolation[];
  /** google.rpc.RetryInfo: how long to wait before retrying. */
  retryDelayMs?: number;
}

/** Base class of every error this client throws. */
export class SandpoolError extends Error {
  /** The gRPC status code. */
  readonly code: Code;
  /** The server's message without the "[code]" prefix. */
  readonly rawMessage: string;
  readonly details: ErrorDetails;

  constructor(code: Code, rawMessage: string, details?: ErrorDetails, options?: { cause?: unknown }) {
    super(`[${codeName(code)}] ${rawMessage}`, options);
    this.name = new.target.name;
    this.code = code;
    this.rawMessage = rawMessage;
    this.details = details ?? { fieldViolations: [], preconditionViolations: [] };
  }

  /** The gRPC code name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return codeName(this.code);
  }

  /** The server's machine-readable reason (ErrorInfo: reason, domain, metadata), if it sent one. */
  get errorInfo(): ErrorInfo | undefined {
    return this.details.errorInfo;
  }

  /**
   * The server's reason, typed: undefined when it sent none,
   * ERROR_REASON_UNSPECIFIED for one this client does not know (its name is
   * in `errorInfo.reason`).
   */
  get errorReason(): ErrorReason | undefined {
    return reasonOf(this.details.errorInfo);
  }
}

/** RESOURCE_EXHAUSTED: every container is leased (FAIL_FAST, or the wait ended). */
export class PoolExhausted extends SandpoolError {
  /** The server's suggested wait before retrying, if it sent one. */
  get retryAfterMs(): number | undefined {
    return this.details.retryDelayMs;
  }
}

/** NOT_FOUND: no such pool, run or path. */
export class NotFound extends SandpoolError {}

/** ALREADY_EXISTS: e.g. a pool name that is taken. */
export class AlreadyExists extends SandpoolError {}

/** INVALID_ARGUMENT: the request is wrong; `field` names what. */
export class InvalidArgument extends SandpoolError {
  /** The first field the server named, e.g. "config.min_pool_size". */
  get field(): string | undefined {
    return this.details.fieldViolations[0]?.field ?? /^invalid ([\w.[\]]+):/.exec(this.rawMessage)?.[1];
  }
}

/** FAILED_PRECONDITION: the pool is closed or failing, a file operation failed... */
export class FailedPrecondition extends SandpoolError {}

/** DEADLINE_EXCEEDED: the call's deadline passed. */
export class DeadlineExceeded extends SandpoolError {}

/** UNAUTHENTICATED: missing or rejected bearer token. */
export class Unauthenticated extends SandpoolError {}

/**
 * PERMISSION_DENIED: the caller's role or pool list does not allow the call
 * (reason NOT_PERMITTED), or a pool it asked for is outside the server's
 * policy (POLICY_VIOLATION; `details.fieldViolations` names the field).
 */
export class PermissionDenied extends SandpoolError {}

/** UNAVAILABLE: the server cannot be reached, or is shutting down. */
export class Unavailable extends SandpoolError {}

/** CANCELLED: the caller aborted the call. */
export class Cancelled extends SandpoolError {}

/**
 * The session's lease is gone: it expired on the server (no keepalive within
 * its TTL), was released, revoked (pool deleted, server stopping), or the
 * keepalive failed for longer than the TTL. Acquire a new session.
 */
export class LeaseLost extends SandpoolError {
  readonly leaseId: string;
  /** Why the lease is gone, in words (the server's machine-readable reason, if it sent one, is `errorReason`). */
  readonly reason: string;
  /**
   * How the lease ended (EXPIRED, RELEASED, REVOKED, NOT_FOUND) when the
   * server said so, in a keepalive answer or an error; undefined when the
   * client gave up on it (no keepalive confirmed within the TTL).
   */
  readonly state: LeaseState | undefined;

  constructor(
    leaseId: string,
    reason: string,
    code: Code = Code.FailedPrecondition,
    options?: { cause?: unknown; details?: ErrorDetails; state?: LeaseState },
  ) {
    super(code, `lease ${leaseId} is lost: ${reason}`, options?.details, options);
    this.leaseId = leaseId;
    this.reason = reason;
    this.state = options?.state;
  }
}

/**
 * An owned pool (`SandpoolClient.createOwnedPool`) is gone: its owner TTL ran
 * out on the server, someone deleted it, or this client confirmed no
 * keepalive within the owner TTL (then the server deletes it by itself).
 * Leases on the pool end with LeaseState.POOL_DELETED.
 */
export class PoolLost extends SandpoolError {
  readonly pool: string;
  /** Why the pool is gone, in words. */
  readonly reason: string;
  /**
   * NOT_FOUND when the server said it has no such pool of this owner (a
   * keepalive answer, or a POOL_NOT_FOUND error); undefined when the client
   * gave up on it, or the server said it is being deleted.
   */
  readonly state: LeaseState | undefined;

  constructor(
    pool: string,
    reason: string,
    code: Code = Code.FailedPrecondition,
    options?: { cause?: unknown; details?: ErrorDetails; state?: LeaseState },
  ) {
    super(code, `pool ${pool} is lost: ${reason}`, options?.details, options);
    this.pool = pool;
    this.reason = reason;
    this.state = options?.state;
  }
}

/** The ErrorInfo domain of the server's reasons. */
export const ERROR_DOMAIN = "sandpool";

type ErrorClass = new (code: Code, rawMessage: string, details?: ErrorDetails, options?: { cause?: unknown }) => SandpoolError;

/**
 * The error of every reason the server gives (each one's class is that of
 * its status code); the compiler holds it complete. The lease reasons are
 * LeaseLost on a call about that lease, else their status code's class. A
 * reason this client does not know, and a status without one, map by the
 * status code.
 */
const BY_REASON: Record<Exclude<ErrorReason, ErrorReason.ERROR_REASON_UNSPECIFIED>, ErrorClass | typeof LeaseLost> = {
  [ErrorReason.INVALID_FIELD]: InvalidArgument,
  [ErrorReason.TOO_LARGE]: InvalidArgument,
  [ErrorReason.POOL_NOT_FOUND]: NotFound,
  [ErrorReason.POOL_EXISTS]: AlreadyExists,
  [ErrorReason.POOL_CLOSED]: FailedPrecondition,
  [ErrorReason.POOL_FAILING]: FailedPrecondition,
  [ErrorReason.POOL_EXHAUSTED]: PoolExhausted,
  [ErrorReason.LEASE_NOT_FOUND]: LeaseLost,
  [ErrorReason.LEASE_ENDED]: LeaseLost,
  [ErrorReason.CONTAINER_GONE]: LeaseLost,
  [ErrorReason.RUN_NOT_FOUND]: NotFound,
  [ErrorReason.CONTEXT_NOT_FOUND]: NotFound,
  [ErrorReason.CONTEXT_FAILED]: FailedPrecondition,
  [ErrorReason.PATH_NOT_FOUND]: NotFound,
  [ErrorReason.FILE_OPERATION_FAILED]: FailedPrecondition,
  [ErrorReason.NOT_ALLOWED]: FailedPrecondition,
  [ErrorReason.INSTALL_FAILED]: FailedPrecondition,
  [ErrorReason.IMAGE_MISSING]: FailedPrecondition,
  [ErrorReason.ENGINE_UNAVAILABLE]: Unavailable,
  [ErrorReason.ENGINE_FAILED]: Unavailable,
  [ErrorReason.BACKEND_UNSUPPORTED]: SandpoolError,
  [ErrorReason.SANDBOX_COMMAND_FAILED]: SandpoolError,
  [ErrorReason.SHUTTING_DOWN]: Unavailable,
  [ErrorReason.UNAUTHENTICATED]: Unauthenticated,
  [ErrorReason.NOT_PERMITTED]: PermissionDenied,
  [ErrorReason.POLICY_VIOLATION]: PermissionDenied,
  [ErrorReason.QUOTA_EXCEEDED]: PoolExhausted,
  [ErrorReason.RUN_ID_TAKEN]: AlreadyExists,
  [ErrorReason.STREAM_SUPERSEDED]: SandpoolError,
};

/** The error of a status without a reason this client knows. */
const BY_CODE: Partial<Record<Code, ErrorClass>> = {
  [Code.ResourceExhausted]: PoolExhausted,
  [Code.NotFound]: NotFound,
  [Code.AlreadyExists]: AlreadyExists,
  [Code.InvalidArgument]: InvalidArgument,
  [Code.FailedPrecondition]: FailedPrecondition,
  [Code.DeadlineExceeded]: DeadlineExceeded,
  [Code.Unauthenticated]: Unauthenticated,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.Unavailable]: Unavailable,
  [Code.Canceled]: Cancelled,
};

/** ErrorInfo reasons that say the call's lease is gone. */
export const LEASE_REASONS: readonly ErrorReason[] = Object.entries(BY_REASON)
  .filter(([, cls]) => cls === LeaseLost)
  .map(([reason]) => Number(reason) as ErrorReason);

/** The typed reason of an ErrorInfo (see `SandpoolError.errorReason`). */
function reasonOf(info: ErrorInfo | undefined): ErrorReason | undefined {
  if (info === undefined || info.domain !== ERROR_DOMAIN) {
    return undefined;
  }
  const value: unknown = (ErrorReason as unknown as Record<string, unknown>)[info.reason];
  return typeof value === "number" ? (value as ErrorReason) : ErrorReason.ERROR_REASON_UNSPECIFIED;
}

/** The class a known reason maps to. */
function classOf(reason: ErrorReason | undefined): ErrorClass | typeof LeaseLost | undefined {
  return reason === undefined || reason === ErrorReason.ERROR_REASON_UNSPECIFIED ? undefined : BY_REASON[reason];
}

const CODE_NAMES: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

function codeName(code: Code): string {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

/**
 * Node.js error codes of a connection that could not be set up or broke
 * under the call: TLS handshake alerts (ERR_SSL_*), certificate checks
 * (UNABLE_TO_VERIFY_LEAF_SIGNATURE, ERR_TLS_CERT_ALTNAME_INVALID, ...),
 * resets. gRPC calls these UNAVAILABLE; the HTTP/2 transport leaves them
 * INTERNAL (or ABORTED, for a reset).
 */
const CONNECTION_FAILURE =
  /^(ERR_SSL_|ERR_TLS_|ERR_OSSL_)|^(ECONNRESET|EPIPE|EPROTO|ERR_SOCKET_CLOSED)$|^UNABLE_TO_|CERT|^(INVALID_CA|INVALID_PURPOSE|PATH_LENGTH_EXCEEDED|HOSTNAME_MISMATCH)$/;

/**
 * The message of a call whose HTTP/2 connection closed under it (the stream
 * ends with CANCEL although the caller aborted nothing): e.g. a plaintext
 * client talking to a TLS-only server, which hangs up on it.
 */
const CONNECTION_CLOSED = /^http\/2 stream closed with error code CANCEL\b/;

/** True when a transport error says the connection failed, not the call. */
function isConnectionFailure(ce: ConnectError): boolean {
  if (ce.code === Code.Canceled) {
    return ce.cause === undefined && CONNECTION_CLOSED.test(ce.rawMessage);
  }
  if (ce.code !== Code.Internal && ce.code !== Code.Aborted && ce.code !== Code.Unknown) {
    return false;
  }
  const seen = new Set<unknown>();
  for (let e: unknown = ce.cause; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_FAILURE.test(code)) {
      return true;
    }
  }
  return false;
}

/**
 * True when a failed call says the connection broke rather than anything
 * about the call: UNAVAILABLE, UNKNOWN, INTERNAL or CANCELLED made up by the
 * transport. The server's own errors carry a sandpool ErrorInfo and are
 * final (its UNAVAILABLE says the engine is down or the server stopping). A
 * resumable run calls again after a transport failure.
 */
export function isTransportFailure(err: unknown): boolean {
  const mapped = mapError(err);
  const ce = ConnectError.from(err);
  const codes = [Code.Unavailable, Code.Unknown, Code.Internal, Code.Canceled];
  if (codes.includes(mapped.code) || codes.includes(ce.code)) {
    return mapped.errorInfo?.domain !== "sandpool";
  }
  return false;
}

/** Maps any error of a call to a SandpoolError (already mapped ones pass through). */
export function mapError(err: unknown): SandpoolError {
  if (err instanceof SandpoolError) {
    return err;
  }
  const ce = ConnectError.from(err);
  if (isConnectionFailure(ce)) {
    const message =
      ce.code === Code.Canceled ? `the connection closed under the call (${ce.rawMessage})` : ce.rawMessage;
    return new Unavailable(Code.Unavailable, message, decodeDetails(ce), { cause: err });
  }
  const details = decodeDetails(ce);
  let cls = classOf(reasonOf(details.errorInfo));
  if (cls === undefined || cls === LeaseLost) {
    cls = BY_CODE[ce.code] ?? SandpoolError;
  }
  return new (cls as ErrorClass)(ce.code, ce.rawMessage, details, { cause: err });
}

/** Makes a call and maps its error (one thrown at once as well). */
export async function mapped<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw mapError(err);
  }
}

/**
 * Maps an error of a call made on a lease: the server saying that this
 * lease is gone becomes LeaseLost; anything else maps as usual. The server
 * says so with a lease reason (LEASE_NOT_FOUND, LEASE_ENDED, CONTAINER_GONE)
 * whose metadata lease_id is this lease. Servers without ErrorInfo details:
 * a CONTAINER_GONE precondition violation about the lease, or a message that
 * starts with the lease.
 */
export function mapLeaseError(err: unknown, leaseId: string): SandpoolError {
  const mapped = mapError(err);
  if (mapped instanceof LeaseLost || !leaseIsGone(mapped, leaseId)) {
    return mapped;
  }
  return new LeaseLost(leaseId, mapped.rawMessage, mapped.code, {
    cause: err,
    details: mapped.details,
    state: endOf(mapped),
  });
}

/**
 * Maps an error of a call about an owned pool: the server saying that this
 * pool is gone (reason POOL_NOT_FOUND or POOL_CLOSED whose metadata pool is
 * this pool; without details, NOT_FOUND) becomes PoolLost; anything else
 * maps as usual.
 */
export function mapPoolError(err: unknown, pool: string): SandpoolError {
  const mapped = mapError(err);
  if (mapped instanceof PoolLost) {
    return mapped;
  }
  const info = mapped.details.errorInfo;
  const reason = mapped.errorReason;
  const gone =
    info !== undefined && reason !== undefined && reason !== ErrorReason.ERROR_REASON_UNSPECIFIED
      ? (reason === ErrorReason.POOL_NOT_FOUND || reason === ErrorReason.POOL_CLOSED) &&
        (info.metadata["pool"] ?? pool) === pool
      : mapped.code === Code.NotFound;
  if (!gone) {
    return mapped;
  }
  return new PoolLost(pool, mapped.rawMessage, mapped.code, {
    cause: err,
    details: mapped.details,
    state: mapped.code === Code.NotFound ? LeaseState.NOT_FOUND : undefined,
  });
}

function leaseIsGone(mapped: SandpoolError, leaseId: string): boolean {
  const info = mapped.details.errorInfo;
  const cls = classOf(mapped.errorReason);
  if (info !== undefined && cls !== undefined) {
    return cls === LeaseLost && (info.metadata["lease_id"] ?? leaseId) === leaseId;
  }
  if (mapped.details.preconditionViolations.some((v) => v.subject === leaseId && v.type === "CONTAINER_GONE")) {
    return true;
  }
  return (
    info === undefined &&
    (mapped.code === Code.NotFound || mapped.code === Code.FailedPrecondition) &&
    (mapped.rawMessage.startsWith(`lease ${leaseId} `) ||
      mapped.rawMessage.startsWith(`the container of lease ${leaseId} is gone`))
  );
}

/** How the lease ended, by the reason and its `end` metadata (a LeaseState name). */
function endOf(mapped: SandpoolError): LeaseState | undefined {
  const reason = mapped.errorReason;
  if (reason === ErrorReason.LEASE_NOT_FOUND) {
    return LeaseState.NOT_FOUND;
  }
  const end = (mapped.details.errorInfo?.metadata["end"] ?? "").replace(/^LEASE_STATE_/, "");
  const state: unknown = (LeaseState as unknown as Record<string, unknown>)[end];
  return reason === ErrorReason.LEASE_ENDED && typeof state === "number" ? (state as LeaseState) : undefined;
}

// ---------------------------------------------------------------- details

const TYPE_BAD_REQUEST = "google.rpc.BadRequest";
const TYPE_PRECONDITION = "google.rpc.PreconditionFailure";
const TYPE_RETRY_INFO = "google.rpc.RetryInfo";
const TYPE_ERROR_INFO = "google.rpc.ErrorInfo";

/** Decodes the rich error details of a connect error (exported for tests). */
export function decodeDetails(err: ConnectError): ErrorDetails {
  const out: ErrorDetails = { fieldViolations: [], preconditionViolations: [] };
  for (const d of err.details) {
    if (!("type" in d) || !(d.value instanceof Uint8Array)) {
      continue;
    }
    try {
      switch (d.type) {
        case TYPE_BAD_REQUEST:
          for (const v of repeatedMessages(d.value, 1)) {
            const f = fields(v);
            out.fieldViolations.push({ field: f.str(1), description: f.str(2) });
          }
          break;
        case TYPE_PRECONDITION:
          for (const v of repeatedMessages(d.value, 1)) {
            const f = fields(v);
            out.preconditionViolations.push({ type: f.str(1), subject: f.str(2), description: f.str(3) });
          }
          break;
        case TYPE_ERROR_INFO: {
          const f = fields(d.value);
          const metadata: Record<string, string> = {};
          for (const entry of repeatedMessages(d.value, 3)) {
            const e = fields(entry);
            metadata[e.str(1)] = e.str(2);
          }
          out.errorInfo = { reason: f.str(1), domain: f.str(2), metadata };
          break;
        }
        case TYPE_RETRY_INFO: {
          const delay = fields(d.value).bytes(1);
          if (delay) {
            const f = fields(delay);
            out.retryDelayMs = f.int(1) * 1000 + Math.round(f.int(2) / 1e6);
          }
          break;
        }
        default:
          break;
      }
    } catch {
      // A malformed detail is ignored; the code and message still hold.
    }
  }
  return out;
}

/** The length-delimited occurrences of field `no` in a message. */
function repeatedMessages(buf: Uint8Array, no: number): Uint8Array[] {
  const found: Uint8Array[] = [];
  const r = new BinaryReader(buf);
  while (r.pos < r.len) {
    const [fieldNo, wireType] = r.tag();
    if (fieldNo === no && wireType === WireType.LengthDelimited) {
      found.push(r.bytes());
    } else {
      r.skip(wireType, fieldNo);
    }
  }
  return found;
}

/** Reads scalar fields of a small message: strings, bytes and varints by number. */
function fields(buf: Uint8Array) {
  const bytes = new Map<number, Uint8Array>();
  const ints = new Map<number, number>();
  const r = new BinaryReader(buf);
  while (r.pos < r.len) {
    const [fieldNo, wireType] = r.tag();
    if (wireType === WireType.LengthDelimited) {
      bytes.set(fieldNo, r.bytes());
    } else if (wireType === WireType.Varint) {
      ints.set(fieldNo, Number(r.int64()));
    } else {
      r.skip(wireType, fieldNo);
    }
  }
  const utf8 = new TextDecoder();
  return {
    str: (no: number) => utf8.decode(bytes.get(no) ?? new Uint8Array()),
    bytes: (no: number) => bytes.get(no),
    int: (no: number) => ints.get(no) ?? 0,
  };
}
