import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

import type { KeysClient as _keyward_v1_KeysClient, KeysDefinition as _keyward_v1_KeysDefinition } from './keyward/v1/Keys';

type SubtypeConstructor<Constructor extends new (...args: any) => any, Subtype> = {
  new(...args: ConstructorParameters<Constructor>): Subtype;
};

export interface ProtoGrpcType {
  google: {
    protobuf: {
      Timestamp: MessageTypeDefinition
    }
  }
  keyward: {
    v1: {
      AuthFailureAck: MessageTypeDefinition
      AuthFailureReport: MessageTypeDefinition
      GetKeyRequest: MessageTypeDefinition
      KeyEvent: MessageTypeDefinition
      KeyRef: MessageTypeDefinition
      KeySet: MessageTypeDefinition
      KeyUseAck: MessageTypeDefinition
      KeyUseReport: MessageTypeDefinition
      KeyVersion: MessageTypeDefinition
      /**
       * Keys is served on the service socket (default /run/keyward/keys.sock).
       * The caller is identified by the kernel's peer credentials; the agent's
       * policy decides which keys it may read.
       */
      Keys: SubtypeConstructor<typeof grpc.Client, _keyward_v1_KeysClient> & { service: _keyward_v1_KeysDefinition }
      RotationState: EnumTypeDefinition
      WatchKeysRequest: MessageTypeDefinition
    }
  }
}

