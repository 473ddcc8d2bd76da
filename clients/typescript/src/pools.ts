// Pool admin types: a plain-object pool spec (durations in milliseconds,
// llm-sandbox's PoolConfig field names in camelCase) and statistics with
// plain numbers, converted to and from the generated messages.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";

import {
  Backend,
  ExhaustionStrategy,
  PoolPhase,
  type Pool as PbPool,
  type PoolSpec as PbPoolSpec,
  type PoolSpecSchema,
  type PoolStats as PbPoolStats,
  type LatencySummary as PbLatencySummary,
} from "./gen/sandpool/v1/pool_pb.js";

export type BackendName = "docker" | "podman" | "kubernetes";
export type ExhaustionStrategyName = "wait" | "fail_fast" | "temporary";
export type PoolPhaseName = "warming" | "ready" | "failing" | "draining" | "unspecified";

/** Container limits and security settings (llm-sandbox's runtime_configs). */
export interface RuntimeConfigInput {
  /** Docker syntax, e.g. "512m". Default "1g". */
  memLimit?: string;
  cpuPeriod?: number;
  cpuQuota?: number;
  cpus?: number;
  pidsLimit?: number;
  /** "none" (default) or an engine network name. */
  network?: string;
  /** "uid:gid"; default "1000:1000". */
  user?: string;
  readOnlyRoot?: boolean;
  ociRuntime?: string;
  tmpfsSize?: string;
  env?: Record<string, string>;
}

/**
 * What defines a pool. Absent fields take the server's defaults (those of
 * llm-sandbox's PoolConfig). Durations are in milliseconds; for the optional
 * limits, 0 means "no limit".
 */
export interface PoolSpecInput {
  name: string;
  language: string;
  backend?: BackendName;
  /** Default: the language's image, sandpool/<language>:bookworm. */
  image?: string;
  libraries?: string[];
  maxPoolSize?: number;
  minPoolSize?: number;
  idleTimeoutMs?: number;
  acquisitionTimeoutMs?: number;
  healthCheckIntervalMs?: number;
  maxContainerLifetimeMs?: number;
  maxContainerUses?: number;
  exhaustionStrategy?: ExhaustionStrategyName;
  enablePrewarming?: boolean;
  runtime?: RuntimeConfigInput;
  /** Reuse a container after its lease ends (reset first). Default true. */
  reuse?: boolean;
  defaultLeaseTtlMs?: number;
  maxLeaseTtlMs?: number;
  defaultRunTimeoutMs?: number;
  maxRunTimeoutMs?: number;
  outputLimitBytes?: number;
  /** What the server keeps of each run's events for a client whose connection broke. Default 4 MiB. */
  runBufferBytes?: number;
  /** false: every run of the pool is an engine exec. Default: the server's setting (on: a resident runner per container). */
  residentRunner?: boolean;
  /** Default /sandbox/outputs. */
  outputDir?: string;
  /** Engine network used while libraries are installed. Default "bridge". */
  installNetwork?: string;
  /** Allow `installLibraries` on leases to reach the network. Default false. */
  leaseInstalls?: boolean;
  /** Package index for installs (pip's --index-url, npm's --registry). */
  packageIndexUrl?: string;
  /**
   * Kubernetes pools only: the namespace of their pods. Default: the
   * server's (`[kubernetes] namespace`); the server allows only the
   * namespaces its operator listed (`[kubernetes] namespaces`).
   */
  namespace?: string;
}

export interface StateCounts {
  initializing: number;
  idle: number;
  busy: number;
  resetting: number;
  unhealthy: number;
  removing: number;
}

export interface RecycleCounts {
  idleTimeout: number;
  lifetime: number;
  uses: number;
  unhealthy: number;
  noReuse: number;
  resetFailed: number;
  drained: number;
}

export interface PoolCounters {
  acquisitions: number;
  waits: number;
  waitTimeouts: number;
  failFastRefusals: number;
  temporaries: number;
  releases: number;
  leaseExpirations: number;
  healthFailures: number;
  containersCreated: number;
  createFailures: number;
  recycled: RecycleCounts;
  runs: number;
}

export interface LatencySummary {
  samples: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** A pool's statistics: llm-sandbox's get_stats() keys (camelCase) plus counters. */
export interface PoolStats {
  pool: string;
  totalSize: number;
  maxSize: number;
  minSize: number;
  stateCounts: StateCounts;
  closed: boolean;
  counters: PoolCounters;
  acquireLatency: LatencySummary;
  temporaryContainers: number;
  waiting: number;
  activeLeases: number;
  time: Date | undefined;
}

/** A pool as the server sees it. */
export interface PoolInfo {
  name: string;
  /** The effective spec with every default filled in (the generated message). */
  spec: PbPoolSpec | undefined;
  phase: PoolPhaseName;
  /** Why the pool is failing; empty otherwise. */
  statusMessage: string;
  createTime: Date | undefined;
  stats: PoolStats;
  /** The identity that created the pool at run time; empty for the config file's pools. */
  owner: string;
  /** For an owned pool (created with an owner TTL): when it lapses unless its owner keeps it alive. */
  ownerExpireTime: Date | undefined;
}

const BACKENDS: Record<BackendName, Backend> = {
  docker: Backend.DOCKER,
  podman: Backend.PODMAN,
  kubernetes: Backend.KUBERNETES,
};

const STRATEGIES: Record<ExhaustionStrategyName, ExhaustionStrategy> = {
  wait: ExhaustionStrategy.WAIT,
  fail_fast: ExhaustionStrategy.FAIL_FAST,
  temporary: ExhaustionStrategy.TEMPORARY,
};

function ms(value: number | undefined): Duration | undefined {
  return value === undefined ? undefined : durationFromMs(value);
}

function int64(value: number | undefined): bigint | undefined {
  return value === undefined ? undefined : BigInt(Math.trunc(value));
}

/** Builds the generated PoolSpec from the plain form. */
export function poolSpecToPb(input: PoolSpecInput): MessageInitShape<typeof PoolSpecSchema> {
  const r = input.runtime;
  return {
    name: input.name,
    language: input.language,
    backend: input.backend === undefined ? Backend.UNSPECIFIED : BACKENDS[input.backend],
    image: input.image ?? "",
    libraries: input.libraries ?? [],
    config: {
      maxPoolSize: input.maxPoolSize,
      minPoolSize: input.minPoolSize,
      idleTimeout: ms(input.idleTimeoutMs),
      acquisitionTimeout: ms(input.acquisitionTimeoutMs),
      healthCheckInterval: ms(input.healthCheckIntervalMs),
      maxContainerLifetime: ms(input.maxContainerLifetimeMs),
      maxContainerUses: input.maxContainerUses,
      exhaustionStrategy:
        input.exhaustionStrategy === undefined ? ExhaustionStrategy.UNSPECIFIED : STRATEGIES[input.exhaustionStrategy],
      enablePrewarming: input.enablePrewarming,
    },
    runtime:
      r === undefined
        ? undefined
        : {
            memLimit: r.memLimit,
            cpuPeriod: int64(r.cpuPeriod),
            cpuQuota: int64(r.cpuQuota),
            cpus: r.cpus,
            pidsLimit: int64(r.pidsLimit),
            network: r.network,
            user: r.user,
            readOnlyRoot: r.readOnlyRoot,
            ociRuntime: r.ociRuntime,
            tmpfsSize: r.tmpfsSize,
            env: r.env ?? {},
          },
    reuse: input.reuse,
    defaultLeaseTtl: ms(input.defaultLeaseTtlMs),
    maxLeaseTtl: ms(input.maxLeaseTtlMs),
    defaultRunTimeout: ms(input.defaultRunTimeoutMs),
    maxRunTimeout: ms(input.maxRunTimeoutMs),
    outputLimitBytes: input.outputLimitBytes === undefined ? undefined : BigInt(input.outputLimitBytes),
    outputDir: input.outputDir ?? "",
    installNetwork: input.installNetwork ?? "",
    leaseInstalls: input.leaseInstalls,
    packageIndexUrl: input.packageIndexUrl ?? "",
    namespace: input.namespace,
    runBufferBytes: input.runBufferBytes === undefined ? undefined : BigInt(input.runBufferBytes),
    residentRunner: input.residentRunner,
  };
}

export function durationToMs(d: Duration | undefined): number {
  return d === undefined ? 0 : durationMs(d);
}

export function dateOf(t: Timestamp | undefined): Date | undefined {
  return t === undefined ? undefined : timestampDate(t);
}

function latency(l: PbLatencySummary | undefined): LatencySummary {
  return {
    samples: Number(l?.samples ?? 0n),
    p50Ms: durationToMs(l?.p50),
    p90Ms: durationToMs(l?.p90),
    p99Ms: durationToMs(l?.p99),
    maxMs: durationToMs(l?.max),
  };
}

export function statsFromPb(s: PbPoolStats | undefined): PoolStats {
  const c = s?.counters;
  const rc = c?.recycled;
  const sc = s?.stateCounts;
  const n = (v: bigint | undefined) => Number(v ?? 0n);
  return {
    pool: s?.pool ?? "",
    totalSize: s?.totalSize ?? 0,
    maxSize: s?.maxSize ?? 0,
    minSize: s?.minSize ?? 0,
    stateCounts: {
      initializing: sc?.initializing ?? 0,
      idle: sc?.idle ?? 0,
      busy: sc?.busy ?? 0,
      resetting: sc?.resetting ?? 0,
      unhealthy: sc?.unhealthy ?? 0,
      removing: sc?.removing ?? 0,
    },
    closed: s?.closed ?? false,
    counters: {
      acquisitions: n(c?.acquisitions),
      waits: n(c?.waits),
      waitTimeouts: n(c?.waitTimeouts),
      failFastRefusals: n(c?.failFastRefusals),
      temporaries: n(c?.temporaries),
      releases: n(c?.releases),
      leaseExpirations: n(c?.leaseExpirations),
      healthFailures: n(c?.healthFailures),
      containersCreated: n(c?.containersCreated),
      createFailures: n(c?.createFailures),
      recycled: {
        idleTimeout: n(rc?.idleTimeout),
        lifetime: n(rc?.lifetime),
        uses: n(rc?.uses),
        unhealthy: n(rc?.unhealthy),
        noReuse: n(rc?.noReuse),
        resetFailed: n(rc?.resetFailed),
        drained: n(rc?.drained),
      },
      runs: n(c?.runs),
    },
    acquireLatency: latency(s?.acquireLatency),
    temporaryContainers: s?.temporaryContainers ?? 0,
    waiting: s?.waiting ?? 0,
    activeLeases: s?.activeLeases ?? 0,
    time: dateOf(s?.time),
  };
}

const PHASES: Record<PoolPhase, PoolPhaseName> = {
  [PoolPhase.UNSPECIFIED]: "unspecified",
  [PoolPhase.WARMING]: "warming",
  [PoolPhase.READY]: "ready",
  [PoolPhase.FAILING]: "failing",
  [PoolPhase.DRAINING]: "draining",
};

export function poolFromPb(p: PbPool | undefined): PoolInfo {
  return {
    name: p?.spec?.name ?? "",
    spec: p?.spec,
    phase: p === undefined ? "unspecified" : (PHASES[p.phase] ?? "unspecified"),
    statusMessage: p?.statusMessage ?? "",
    createTime: dateOf(p?.createTime),
    stats: statsFromPb(p?.stats),
    owner: p?.owner ?? "",
    ownerExpireTime: dateOf(p?.ownerExpireTime),
  };
}
