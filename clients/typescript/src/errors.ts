// Errors: every failed call rejects with a SandpoolError subclass chosen by
// the gRPC status code, carrying the standard rich error details the server
// sends (bad-request field, retry delay, precondition violations).

import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

export { Code };

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
  /** Why the lease is gone, in words (the server's machine-readable reason, if it sent one, is `errorInfo.reason`). */
  readonly reason: string;

  constructor(leaseId: string, reason: string, code: Code = Code.FailedPrecondition, options?: { cause?: unknown; details?: ErrorDetails }) {
    super(code, `lease ${leaseId} is lost: ${reason}`, options?.details, options);
    this.leaseId = leaseId;
    this.reason = reason;
  }
}

/** The ErrorInfo domain of the server's reasons. */
export const ERROR_DOMAIN = "sandpool";
/** ErrorInfo reasons that say the call's lease is gone. */
export const LEASE_REASONS: readonly string[] = ["LEASE_NOT_FOUND", "LEASE_ENDED"];

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
  const args = [ce.code, ce.rawMessage, details, { cause: err }] as const;
  switch (ce.code) {
    case Code.ResourceExhausted:
      return new PoolExhausted(...args);
    case Code.NotFound:
      return new NotFound(...args);
    case Code.AlreadyExists:
      return new AlreadyExists(...args);
    case Code.InvalidArgument:
      return new InvalidArgument(...args);
    case Code.FailedPrecondition:
      return new FailedPrecondition(...args);
    case Code.DeadlineExceeded:
      return new DeadlineExceeded(...args);
    case Code.Unauthenticated:
      return new Unauthenticated(...args);
    case Code.Unavailable:
      return new Unavailable(...args);
    case Code.Canceled:
      return new Cancelled(...args);
    default:
      return new SandpoolError(...args);
  }
}

/**
 * Maps an error of a call made on a lease: NOT_FOUND or FAILED_PRECONDITION
 * because the lease itself is gone becomes LeaseLost; anything else maps as
 * usual. The server says so with an ErrorInfo (domain "sandpool", reason
 * LEASE_NOT_FOUND or LEASE_ENDED, metadata lease_id); a container that
 * vanished under the lease is a CONTAINER_GONE precondition violation.
 * Without details, the message ("lease <id> ...") is the fallback.
 */
export function mapLeaseError(err: unknown, leaseId: string): SandpoolError {
  const mapped = mapError(err);
  if (mapped instanceof LeaseLost) {
    return mapped;
  }
  if (mapped.code !== Code.NotFound && mapped.code !== Code.FailedPrecondition) {
    return mapped;
  }
  const info = mapped.details.errorInfo;
  let aboutLease: boolean;
  if (info !== undefined && info.domain === ERROR_DOMAIN && LEASE_REASONS.includes(info.reason)) {
    aboutLease = (info.metadata["lease_id"] ?? leaseId) === leaseId;
  } else if (mapped.details.preconditionViolations.some((v) => v.subject === leaseId && v.type === "CONTAINER_GONE")) {
    aboutLease = true;
  } else {
    aboutLease =
      info === undefined &&
      (mapped.rawMessage.startsWith(`lease ${leaseId} `) ||
        mapped.rawMessage.startsWith(`the container of lease ${leaseId} is gone`));
  }
  if (!aboutLease) {
    return mapped;
  }
  return new LeaseLost(leaseId, mapped.rawMessage, mapped.code, { cause: err, details: mapped.details });
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
