// Original file: proto/keyward/v1/keys.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { AuthFailureAck as _keyward_v1_AuthFailureAck, AuthFailureAck__Output as _keyward_v1_AuthFailureAck__Output } from '../../keyward/v1/AuthFailureAck';
import type { AuthFailureReport as _keyward_v1_AuthFailureReport, AuthFailureReport__Output as _keyward_v1_AuthFailureReport__Output } from '../../keyward/v1/AuthFailureReport';
import type { GetKeyRequest as _keyward_v1_GetKeyRequest, GetKeyRequest__Output as _keyward_v1_GetKeyRequest__Output } from '../../keyward/v1/GetKeyRequest';
import type { KeyEvent as _keyward_v1_KeyEvent, KeyEvent__Output as _keyward_v1_KeyEvent__Output } from '../../keyward/v1/KeyEvent';
import type { KeySet as _keyward_v1_KeySet, KeySet__Output as _keyward_v1_KeySet__Output } from '../../keyward/v1/KeySet';
import type { KeyUseAck as _keyward_v1_KeyUseAck, KeyUseAck__Output as _keyward_v1_KeyUseAck__Output } from '../../keyward/v1/KeyUseAck';
import type { KeyUseReport as _keyward_v1_KeyUseReport, KeyUseReport__Output as _keyward_v1_KeyUseReport__Output } from '../../keyward/v1/KeyUseReport';
import type { WatchKeysRequest as _keyward_v1_WatchKeysRequest, WatchKeysRequest__Output as _keyward_v1_WatchKeysRequest__Output } from '../../keyward/v1/WatchKeysRequest';

/**
 * Keys is served on the service socket (default /run/keyward/keys.sock).
 * The caller is identified by the kernel's peer credentials; the agent's
 * policy decides which keys it may read.
 */
export interface KeysClient extends grpc.Client {
  /**
   * The current primary and fallback of one key.
   */
  GetKey(argument: _keyward_v1_GetKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  GetKey(argument: _keyward_v1_GetKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  GetKey(argument: _keyward_v1_GetKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  GetKey(argument: _keyward_v1_GetKeyRequest, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  /**
   * The current primary and fallback of one key.
   */
  getKey(argument: _keyward_v1_GetKeyRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  getKey(argument: _keyward_v1_GetKeyRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  getKey(argument: _keyward_v1_GetKeyRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  getKey(argument: _keyward_v1_GetKeyRequest, callback: grpc.requestCallback<_keyward_v1_KeySet__Output>): grpc.ClientUnaryCall;
  
  /**
   * A client tells the agent that a key was refused (401/403).
   */
  ReportAuthFailure(argument: _keyward_v1_AuthFailureReport, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  ReportAuthFailure(argument: _keyward_v1_AuthFailureReport, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  ReportAuthFailure(argument: _keyward_v1_AuthFailureReport, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  ReportAuthFailure(argument: _keyward_v1_AuthFailureReport, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  /**
   * A client tells the agent that a key was refused (401/403).
   */
  reportAuthFailure(argument: _keyward_v1_AuthFailureReport, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  reportAuthFailure(argument: _keyward_v1_AuthFailureReport, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  reportAuthFailure(argument: _keyward_v1_AuthFailureReport, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  reportAuthFailure(argument: _keyward_v1_AuthFailureReport, callback: grpc.requestCallback<_keyward_v1_AuthFailureAck__Output>): grpc.ClientUnaryCall;
  
  /**
   * A client tells the agent that calls made with a version succeeded: the
   * evidence a rotation needs before it retires the old key. Send at most
   * one per version every few seconds, off the request path.
   */
  ReportKeyUse(argument: _keyward_v1_KeyUseReport, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  ReportKeyUse(argument: _keyward_v1_KeyUseReport, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  ReportKeyUse(argument: _keyward_v1_KeyUseReport, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  ReportKeyUse(argument: _keyward_v1_KeyUseReport, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  /**
   * A client tells the agent that calls made with a version succeeded: the
   * evidence a rotation needs before it retires the old key. Send at most
   * one per version every few seconds, off the request path.
   */
  reportKeyUse(argument: _keyward_v1_KeyUseReport, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  reportKeyUse(argument: _keyward_v1_KeyUseReport, metadata: grpc.Metadata, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  reportKeyUse(argument: _keyward_v1_KeyUseReport, options: grpc.CallOptions, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  reportKeyUse(argument: _keyward_v1_KeyUseReport, callback: grpc.requestCallback<_keyward_v1_KeyUseAck__Output>): grpc.ClientUnaryCall;
  
  /**
   * The full KeySet of each key at once, then after every change.
   */
  WatchKeys(argument: _keyward_v1_WatchKeysRequest, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_keyward_v1_KeyEvent__Output>;
  WatchKeys(argument: _keyward_v1_WatchKeysRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<_keyward_v1_KeyEvent__Output>;
  /**
   * The full KeySet of each key at once, then after every change.
   */
  watchKeys(argument: _keyward_v1_WatchKeysRequest, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_keyward_v1_KeyEvent__Output>;
  watchKeys(argument: _keyward_v1_WatchKeysRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<_keyward_v1_KeyEvent__Output>;
  
}

/**
 * Keys is served on the service socket (default /run/keyward/keys.sock).
 * The caller is identified by the kernel's peer credentials; the agent's
 * policy decides which keys it may read.
 */
export interface KeysHandlers extends grpc.UntypedServiceImplementation {
  /**
   * The current primary and fallback of one key.
   */
  GetKey: grpc.handleUnaryCall<_keyward_v1_GetKeyRequest__Output, _keyward_v1_KeySet>;
  
  /**
   * A client tells the agent that a key was refused (401/403).
   */
  ReportAuthFailure: grpc.handleUnaryCall<_keyward_v1_AuthFailureReport__Output, _keyward_v1_AuthFailureAck>;
  
  /**
   * A client tells the agent that calls made with a version succeeded: the
   * evidence a rotation needs before it retires the old key. Send at most
   * one per version every few seconds, off the request path.
   */
  ReportKeyUse: grpc.handleUnaryCall<_keyward_v1_KeyUseReport__Output, _keyward_v1_KeyUseAck>;
  
  /**
   * The full KeySet of each key at once, then after every change.
   */
  WatchKeys: grpc.handleServerStreamingCall<_keyward_v1_WatchKeysRequest__Output, _keyward_v1_KeyEvent>;
  
}

export interface KeysDefinition extends grpc.ServiceDefinition {
  GetKey: MethodDefinition<_keyward_v1_GetKeyRequest, _keyward_v1_KeySet, _keyward_v1_GetKeyRequest__Output, _keyward_v1_KeySet__Output>
  ReportAuthFailure: MethodDefinition<_keyward_v1_AuthFailureReport, _keyward_v1_AuthFailureAck, _keyward_v1_AuthFailureReport__Output, _keyward_v1_AuthFailureAck__Output>
  ReportKeyUse: MethodDefinition<_keyward_v1_KeyUseReport, _keyward_v1_KeyUseAck, _keyward_v1_KeyUseReport__Output, _keyward_v1_KeyUseAck__Output>
  WatchKeys: MethodDefinition<_keyward_v1_WatchKeysRequest, _keyward_v1_KeyEvent, _keyward_v1_WatchKeysRequest__Output, _keyward_v1_KeyEvent__Output>
}
