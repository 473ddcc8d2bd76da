"""Generated protobuf and gRPC code of the sandpool.v1 contract.

Every ``*_pb2*`` module here is written by ``scripts/gen-python.sh`` from
``proto/sandpool/v1/*.proto``; do not edit them by hand.
"""
