"""Generated gRPC stubs for proto/keyward/v1/keys.proto.

Do not edit: regenerate with clients/python/gen.sh.
"""
