// The generated code of the sandpool.v1 contract (scripts/gen-typescript.sh).
export * from "./gen/sandpool/v1/pool_pb.js";
export * from "./gen/sandpool/v1/session_pb.js";
export * from "./gen/sandpool/v1/artifact_pb.js";
export * from "./gen/sandpool/v1/errors_pb.js";
