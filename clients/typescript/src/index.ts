// @sandpool/client: leases on warm sandbox containers, kept alive in the
// background, with streamed runs, files and pool administration.

export { SandpoolClient, DEFAULT_ADDRESS, DEFAULT_OWNER_TTL_MS, DEFAULT_TIMEOUT_MS } from "./client.js";
export type { AcquireOptions, ClientOptions, OwnedPoolOptions, TlsOptions, WatchOptions } from "./client.js";
export { OwnedPool } from "./owned.js";
export { Context, Session } from "./session.js";
export type {
  Download,
  InstallResult,
  Interaction,
  LeaseInfo,
  RunStream,
  UploadOptions,
  UploadResult,
  UploadSource,
} from "./session.js";
export type { InteractInput, InteractOptions } from "./interact.js";
export type {
  Artifact,
  ArtifactEvent,
  ArtifactMeta,
  ContextRunOptions,
  EndReasonName,
  ExitEvent,
  GapEvent,
  OutputEvent,
  Program,
  RunEvent,
  RunOptions,
  RunResult,
  RunStartedEvent,
} from "./run.js";
export type {
  BackendName,
  ExhaustionStrategyName,
  LatencySummary,
  PoolCounters,
  PoolInfo,
  PoolPhaseName,
  PoolSpecInput,
  PoolStats,
  RecycleCounts,
  RuntimeConfigInput,
  StateCounts,
} from "./pools.js";
export {
  AlreadyExists,
  Cancelled,
  Code,
  DeadlineExceeded,
  ErrorReason,
  FailedPrecondition,
  InvalidArgument,
  LeaseLost,
  NotFound,
  PoolExhausted,
  PoolLost,
  SandpoolError,
  PermissionDenied,
  Unauthenticated,
  Unavailable,
} from "./errors.js";
export { ERROR_DOMAIN, LEASE_REASONS, mapError, mapLeaseError, mapPoolError } from "./errors.js";
export type { ErrorDetails, ErrorInfo, FieldViolation, PreconditionViolation } from "./errors.js";

/** The generated messages and services of sandpool.v1, for direct use. */
export * as proto from "./proto.js";
