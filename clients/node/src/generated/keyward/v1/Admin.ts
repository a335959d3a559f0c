// Original file: proto/keyward/v1/admin.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { AgentStatus as _keyward_v1_AgentStatus, AgentStatus__Output as _keyward_v1_AgentStatus__Output } from '../../keyward/v1/AgentStatus';
import type { DeleteKeyRequest as _keyward_v1_DeleteKeyRequest, DeleteKeyRequest__Output as _keyward_v1_DeleteKeyRequest__Output } from '../../keyward/v1/DeleteKeyRequest';
import type { DeleteKeyResponse as _keyward_v1_DeleteKeyResponse, DeleteKeyResponse__Output as _keyward_v1_DeleteKeyResponse__Output } from '../../keyward/v1/DeleteKeyResponse';
import type { FleetStatus as _keyward_v1_FleetStatus, FleetStatus__Output as _keyward_v1_FleetStatus__Output } from '../../keyward/v1/FleetStatus';
import type { FleetStatusRequest as _keyward_v1_FleetStatusRequest, FleetStatusRequest__Output as _keyward_v1_FleetStatusRequest__Output } from '../../keyward/v1/FleetStatusRequest';
import type { GetStatusRequest as _keyward_v1_GetStatusRequest, GetStatusRequest__Output as _keyward_v1_GetStatusRequest__Output } from '../../keyward/v1/GetStatusRequest';
import type { ListKeysRequest as _keyward_v1_ListKeysRequest, ListKeysRequest__Output as _keyward_v1_ListKeysRequest__Output } from '../../keyward/v1/ListKeysRequest';
import type { ListKeysResponse as _keyward_v1_ListKeysResponse, ListKeysResponse__Output as _keyward_v1_ListKeysResponse__Output } from '../../keyward/v1/ListKeysResponse';
import type { PutKeyRequest as _keyward_v1_PutKeyRequest, PutKeyRequest__Output as _keyward_v1_PutKeyRequest__Output } from '../../keyward/v1/PutKeyRequest';
import type { PutKeyResponse as _keyward_v1_PutKeyResponse, PutKeyResponse__Output as _keyward_v1_PutKeyResponse__Output } from '../../keyward/v1/PutKeyResponse';
import type { ResealFleetRequest as _keyward_v1_ResealFleetRequest, ResealFleetRequest__Output as _keyward_v1_ResealFleetRequest__Output } from '../../keyward/v1/ResealFleetRequest';
import type { ResealFleetResponse as _keyward_v1_ResealFleetResponse, ResealFleetResponse__Output as _keyward_v1_ResealFleetResponse__Output } from '../../keyward/v1/ResealFleetResponse';
import type { RetireKeyRequest as _keyward_v1_RetireKeyRequest, RetireKeyRequest__Output as _keyward_v1_RetireKeyRequest__Output } from '../../keyward/v1/RetireKeyRequest';
import type { RotationRequest as _keyward_v1_RotationRequest, RotationRequest__Output as _keyward_v1_RotationRequest__Output } from '../../keyward/v1/RotationRequest';
import type { RotationResponse as _keyward_v1_RotationResponse, RotationResponse__Output as _keyward_v1_RotationResponse__Output } from '../../keyward/v1/RotationResponse';
import type { RotationStatus as _keyward_v1_RotationStatus, RotationStatus__Output as _keyward_v1_RotationStatus__Output } from '../../keyward/v1/RotationStatus';
import type { RotationStatusRequest as _keyward_v1_RotationStatusRequest, RotationStatusRequest__Output as _keyward_v1_RotationStatusRequest__Output } from '../../keyward/v1/RotationStatusRequest';
import type { StageKeyRequest as _keyward_v1_StageKeyRequest, StageKeyRequest__Output as _keyward_v1_StageKeyRequest__Output } from '../../keyward/v1/StageKeyRequest';

export interface AdminClient extends grpc.Client {
  AbortKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  AbortKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  AbortKey(argument: _keyward_v1_RotationRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  AbortKey(argument: _keyward_v1_RotationRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  abortKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  abortKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  abortKey(argument: _keyward_v1_RotationRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  abortKey(argument: _keyward_v1_RotationRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  
  /**
   * Remove a key from the store.
   */
  DeleteKey(argument: _keyward_v1_DeleteKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  DeleteKey(argument: _keyward_v1_DeleteKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  DeleteKey(argument: _keyward_v1_DeleteKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  DeleteKey(argument: _keyward_v1_DeleteKeyRequest, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  /**
   * Remove a key from the store.
   */
  deleteKey(argument: _keyward_v1_DeleteKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  deleteKey(argument: _keyward_v1_DeleteKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  deleteKey(argument: _keyward_v1_DeleteKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  deleteKey(argument: _keyward_v1_DeleteKeyRequest, callback: grpc.requestCallback<_keyward_v1_DeleteKeyResponse__Output>): grpc.ClientUnaryCall;
  
  /**
   * Fleet mode (backend "openbao"): what every agent of the fleet serves,
   * from the status each publishes under the backend's agents path.
   * FAILED_PRECONDITION on an agent with the local backend.
   */
  GetFleetStatus(argument: _keyward_v1_FleetStatusRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  GetFleetStatus(argument: _keyward_v1_FleetStatusRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  GetFleetStatus(argument: _keyward_v1_FleetStatusRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  GetFleetStatus(argument: _keyward_v1_FleetStatusRequest, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  /**
   * Fleet mode (backend "openbao"): what every agent of the fleet serves,
   * from the status each publishes under the backend's agents path.
   * FAILED_PRECONDITION on an agent with the local backend.
   */
  getFleetStatus(argument: _keyward_v1_FleetStatusRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  getFleetStatus(argument: _keyward_v1_FleetStatusRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  getFleetStatus(argument: _keyward_v1_FleetStatusRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  getFleetStatus(argument: _keyward_v1_FleetStatusRequest, callback: grpc.requestCallback<_keyward_v1_FleetStatus__Output>): grpc.ClientUnaryCall;
  
  /**
   * Where a key's rotation stands: subscribers and what they were sent,
   * auth failures since promotion, the retire gate.
   */
  GetRotationStatus(argument: _keyward_v1_RotationStatusRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  GetRotationStatus(argument: _keyward_v1_RotationStatusRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  GetRotationStatus(argument: _keyward_v1_RotationStatusRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  GetRotationStatus(argument: _keyward_v1_RotationStatusRequest, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  /**
   * Where a key's rotation stands: subscribers and what they were sent,
   * auth failures since promotion, the retire gate.
   */
  getRotationStatus(argument: _keyward_v1_RotationStatusRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  getRotationStatus(argument: _keyward_v1_RotationStatusRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  getRotationStatus(argument: _keyward_v1_RotationStatusRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  getRotationStatus(argument: _keyward_v1_RotationStatusRequest, callback: grpc.requestCallback<_keyward_v1_RotationStatus__Output>): grpc.ClientUnaryCall;
  
  /**
   * The agent's health: paths, counts, audit head.
   */
  GetStatus(argument: _keyward_v1_GetStatusRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  GetStatus(argument: _keyward_v1_GetStatusRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  GetStatus(argument: _keyward_v1_GetStatusRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  GetStatus(argument: _keyward_v1_GetStatusRequest, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  /**
   * The agent's health: paths, counts, audit head.
   */
  getStatus(argument: _keyward_v1_GetStatusRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  getStatus(argument: _keyward_v1_GetStatusRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  getStatus(argument: _keyward_v1_GetStatusRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  getStatus(argument: _keyward_v1_GetStatusRequest, callback: grpc.requestCallback<_keyward_v1_AgentStatus__Output>): grpc.ClientUnaryCall;
  
  /**
   * Metadata of every key (never secret bytes).
   */
  ListKeys(argument: _keyward_v1_ListKeysRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  ListKeys(argument: _keyward_v1_ListKeysRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  ListKeys(argument: _keyward_v1_ListKeysRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  ListKeys(argument: _keyward_v1_ListKeysRequest, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  /**
   * Metadata of every key (never secret bytes).
   */
  listKeys(argument: _keyward_v1_ListKeysRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  listKeys(argument: _keyward_v1_ListKeysRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  listKeys(argument: _keyward_v1_ListKeysRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  listKeys(argument: _keyward_v1_ListKeysRequest, callback: grpc.requestCallback<_keyward_v1_ListKeysResponse__Output>): grpc.ClientUnaryCall;
  
  PromoteKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  PromoteKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  PromoteKey(argument: _keyward_v1_RotationRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  PromoteKey(argument: _keyward_v1_RotationRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  promoteKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  promoteKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  promoteKey(argument: _keyward_v1_RotationRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  promoteKey(argument: _keyward_v1_RotationRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  
  /**
   * Create a key. Refuses to replace an existing key unless `overwrite`.
   */
  PutKey(argument: _keyward_v1_PutKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  PutKey(argument: _keyward_v1_PutKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  PutKey(argument: _keyward_v1_PutKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  PutKey(argument: _keyward_v1_PutKeyRequest, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  /**
   * Create a key. Refuses to replace an existing key unless `overwrite`.
   */
  putKey(argument: _keyward_v1_PutKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  putKey(argument: _keyward_v1_PutKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  putKey(argument: _keyward_v1_PutKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  putKey(argument: _keyward_v1_PutKeyRequest, callback: grpc.requestCallback<_keyward_v1_PutKeyResponse__Output>): grpc.ClientUnaryCall;
  
  /**
   * Fleet mode: writes every key's record (of `environment`, if set) again,
   * encrypted to the current [backend] recipients: after an agent joined
   * the fleet. Generations do not change; watchers see nothing.
   */
  ResealFleet(argument: _keyward_v1_ResealFleetRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  ResealFleet(argument: _keyward_v1_ResealFleetRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  ResealFleet(argument: _keyward_v1_ResealFleetRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  ResealFleet(argument: _keyward_v1_ResealFleetRequest, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  /**
   * Fleet mode: writes every key's record (of `environment`, if set) again,
   * encrypted to the current [backend] recipients: after an agent joined
   * the fleet. Generations do not change; watchers see nothing.
   */
  resealFleet(argument: _keyward_v1_ResealFleetRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  resealFleet(argument: _keyward_v1_ResealFleetRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  resealFleet(argument: _keyward_v1_ResealFleetRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  resealFleet(argument: _keyward_v1_ResealFleetRequest, callback: grpc.requestCallback<_keyward_v1_ResealFleetResponse__Output>): grpc.ClientUnaryCall;
  
  RetireKey(argument: _keyward_v1_RetireKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  RetireKey(argument: _keyward_v1_RetireKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  RetireKey(argument: _keyward_v1_RetireKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  RetireKey(argument: _keyward_v1_RetireKeyRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  retireKey(argument: _keyward_v1_RetireKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  retireKey(argument: _keyward_v1_RetireKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  retireKey(argument: _keyward_v1_RetireKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  retireKey(argument: _keyward_v1_RetireKeyRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  
  RollbackKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  RollbackKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  RollbackKey(argument: _keyward_v1_RotationRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  RollbackKey(argument: _keyward_v1_RotationRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  rollbackKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  rollbackKey(argument: _keyward_v1_RotationRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  rollbackKey(argument: _keyward_v1_RotationRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  rollbackKey(argument: _keyward_v1_RotationRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  
  /**
   * Rotation, the safe sequence: stage (new key as fallback) → promote
   * (new key primary, old fallback) → retire (old key dropped), with
   * rollback (promoted → staged) and abort (staged → steady). A command the
   * key's state does not allow is FAILED_PRECONDITION; an
   * expected_generation that does not match is ABORTED.
   */
  StageKey(argument: _keyward_v1_StageKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  StageKey(argument: _keyward_v1_StageKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  StageKey(argument: _keyward_v1_StageKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  StageKey(argument: _keyward_v1_StageKeyRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  /**
   * Rotation, the safe sequence: stage (new key as fallback) → promote
   * (new key primary, old fallback) → retire (old key dropped), with
   * rollback (promoted → staged) and abort (staged → steady). A command the
   * key's state does not allow is FAILED_PRECONDITION; an
   * expected_generation that does not match is ABORTED.
   */
  stageKey(argument: _keyward_v1_StageKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  stageKey(argument: _keyward_v1_StageKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  stageKey(argument: _keyward_v1_StageKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  stageKey(argument: _keyward_v1_StageKeyRequest, callback: grpc.requestCallback<_keyward_v1_RotationResponse__Output>): grpc.ClientUnaryCall;
  
}

export interface AdminHandlers extends grpc.UntypedServiceImplementation {
  AbortKey: grpc.handleUnaryCall<_keyward_v1_RotationRequest__Output, _keyward_v1_RotationResponse>;
  
  /**
   * Remove a key from the store.
   */
  DeleteKey: grpc.handleUnaryCall<_keyward_v1_DeleteKeyRequest__Output, _keyward_v1_DeleteKeyResponse>;
  
  /**
   * Fleet mode (backend "openbao"): what every agent of the fleet serves,
   * from the status each publishes under the backend's agents path.
   * FAILED_PRECONDITION on an agent with the local backend.
   */
  GetFleetStatus: grpc.handleUnaryCall<_keyward_v1_FleetStatusRequest__Output, _keyward_v1_FleetStatus>;
  
  /**
   * Where a key's rotation stands: subscribers and what they were sent,
   * auth failures since promotion, the retire gate.
   */
  GetRotationStatus: grpc.handleUnaryCall<_keyward_v1_RotationStatusRequest__Output, _keyward_v1_RotationStatus>;
  
  /**
   * The agent's health: paths, counts, audit head.
   */
  GetStatus: grpc.handleUnaryCall<_keyward_v1_GetStatusRequest__Output, _keyward_v1_AgentStatus>;
  
  /**
   * Metadata of every key (never secret bytes).
   */
  ListKeys: grpc.handleUnaryCall<_keyward_v1_ListKeysRequest__Output, _keyward_v1_ListKeysResponse>;
  
  PromoteKey: grpc.handleUnaryCall<_keyward_v1_RotationRequest__Output, _keyward_v1_RotationResponse>;
  
  /**
   * Create a key. Refuses to replace an existing key unless `overwrite`.
   */
  PutKey: grpc.handleUnaryCall<_keyward_v1_PutKeyRequest__Output, _keyward_v1_PutKeyResponse>;
  
  /**
   * Fleet mode: writes every key's record (of `environment`, if set) again,
   * encrypted to the current [backend] recipients: after an agent joined
   * the fleet. Generations do not change; watchers see nothing.
   */
  ResealFleet: grpc.handleUnaryCall<_keyward_v1_ResealFleetRequest__Output, _keyward_v1_ResealFleetResponse>;
  
  RetireKey: grpc.handleUnaryCall<_keyward_v1_RetireKeyRequest__Output, _keyward_v1_RotationResponse>;
  
  RollbackKey: grpc.handleUnaryCall<_keyward_v1_RotationRequest__Output, _keyward_v1_RotationResponse>;
  
  /**
   * Rotation, the safe sequence: stage (new key as fallback) → promote
   * (new key primary, old fallback) → retire (old key dropped), with
   * rollback (promoted → staged) and abort (staged → steady). A command the
   * key's state does not allow is FAILED_PRECONDITION; an
   * expected_generation that does not match is ABORTED.
   */
  StageKey: grpc.handleUnaryCall<_keyward_v1_StageKeyRequest__Output, _keyward_v1_RotationResponse>;
  
}

export interface AdminDefinition extends grpc.ServiceDefinition {
  AbortKey: MethodDefinition<_keyward_v1_RotationRequest, _keyward_v1_RotationResponse, _keyward_v1_RotationRequest__Output, _keyward_v1_RotationResponse__Output>
  DeleteKey: MethodDefinition<_keyward_v1_DeleteKeyRequest, _keyward_v1_DeleteKeyResponse, _keyward_v1_DeleteKeyRequest__Output, _keyward_v1_DeleteKeyResponse__Output>
  GetFleetStatus: MethodDefinition<_keyward_v1_FleetStatusRequest, _keyward_v1_FleetStatus, _keyward_v1_FleetStatusRequest__Output, _keyward_v1_FleetStatus__Output>
  GetRotationStatus: MethodDefinition<_keyward_v1_RotationStatusRequest, _keyward_v1_RotationStatus, _keyward_v1_RotationStatusRequest__Output, _keyward_v1_RotationStatus__Output>
  GetStatus: MethodDefinition<_keyward_v1_GetStatusRequest, _keyward_v1_AgentStatus, _keyward_v1_GetStatusRequest__Output, _keyward_v1_AgentStatus__Output>
  ListKeys: MethodDefinition<_keyward_v1_ListKeysRequest, _keyward_v1_ListKeysResponse, _keyward_v1_ListKeysRequest__Output, _keyward_v1_ListKeysResponse__Output>
  PromoteKey: MethodDefinition<_keyward_v1_RotationRequest, _keyward_v1_RotationResponse, _keyward_v1_RotationRequest__Output, _keyward_v1_RotationResponse__Output>
  PutKey: MethodDefinition<_keyward_v1_PutKeyRequest, _keyward_v1_PutKeyResponse, _keyward_v1_PutKeyRequest__Output, _keyward_v1_PutKeyResponse__Output>
  ResealFleet: MethodDefinition<_keyward_v1_ResealFleetRequest, _keyward_v1_ResealFleetResponse, _keyward_v1_ResealFleetRequest__Output, _keyward_v1_ResealFleetResponse__Output>
  RetireKey: MethodDefinition<_keyward_v1_RetireKeyRequest, _keyward_v1_RotationResponse, _keyward_v1_RetireKeyRequest__Output, _keyward_v1_RotationResponse__Output>
  RollbackKey: MethodDefinition<_keyward_v1_RotationRequest, _keyward_v1_RotationResponse, _keyward_v1_RotationRequest__Output, _keyward_v1_RotationResponse__Output>
  StageKey: MethodDefinition<_keyward_v1_StageKeyRequest, _keyward_v1_RotationResponse, _keyward_v1_StageKeyRequest__Output, _keyward_v1_RotationResponse__Output>
}
