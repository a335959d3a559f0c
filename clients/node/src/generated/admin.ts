import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

import type { AdminClient as _keyward_v1_AdminClient, AdminDefinition as _keyward_v1_AdminDefinition } from './keyward/v1/Admin';
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
      Admin: SubtypeConstructor<typeof grpc.Client, _keyward_v1_AdminClient> & { service: _keyward_v1_AdminDefinition }
      AgentStatus: MessageTypeDefinition
      AuthFailureAck: MessageTypeDefinition
      AuthFailureReport: MessageTypeDefinition
      BackendStatus: MessageTypeDefinition
      DeleteKeyRequest: MessageTypeDefinition
      DeleteKeyResponse: MessageTypeDefinition
      EvictedSubscriber: MessageTypeDefinition
      FleetAgent: MessageTypeDefinition
      FleetKey: MessageTypeDefinition
      FleetStatus: MessageTypeDefinition
      FleetStatusRequest: MessageTypeDefinition
      GetKeyRequest: MessageTypeDefinition
      GetStatusRequest: MessageTypeDefinition
      KeyEvent: MessageTypeDefinition
      KeyInfo: MessageTypeDefinition
      KeyRef: MessageTypeDefinition
      KeySet: MessageTypeDefinition
      KeyVersion: MessageTypeDefinition
      /**
       * Keys is served on the service socket (default /run/keyward/keys.sock).
       * The caller is identified by the kernel's peer credentials; the agent's
       * policy decides which keys it may read.
       */
      Keys: SubtypeConstructor<typeof grpc.Client, _keyward_v1_KeysClient> & { service: _keyward_v1_KeysDefinition }
      ListKeysRequest: MessageTypeDefinition
      ListKeysResponse: MessageTypeDefinition
      OpenAlert: MessageTypeDefinition
      PutKeyRequest: MessageTypeDefinition
      PutKeyResponse: MessageTypeDefinition
      ResealFleetRequest: MessageTypeDefinition
      ResealFleetResponse: MessageTypeDefinition
      RetireKeyRequest: MessageTypeDefinition
      RotationRequest: MessageTypeDefinition
      RotationResponse: MessageTypeDefinition
      RotationState: EnumTypeDefinition
      RotationStatus: MessageTypeDefinition
      RotationStatusRequest: MessageTypeDefinition
      SinkStatus: MessageTypeDefinition
      StageKeyRequest: MessageTypeDefinition
      Subscriber: MessageTypeDefinition
      VersionInfo: MessageTypeDefinition
      WatchKeysRequest: MessageTypeDefinition
    }
  }
}

