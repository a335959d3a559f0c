// Original file: proto/keyward/v1/admin.proto

import type { FleetAgent as _keyward_v1_FleetAgent, FleetAgent__Output as _keyward_v1_FleetAgent__Output } from '../../keyward/v1/FleetAgent';
import type { Long } from '@grpc/proto-loader';

export interface FleetStatus {
  'agents'?: (_keyward_v1_FleetAgent)[];
  /**
   * The key's record in the backend, when a key was asked for.
   */
  'backendVersion'?: (number | string | Long);
  'generation'?: (number | string | Long);
}

export interface FleetStatus__Output {
  'agents': (_keyward_v1_FleetAgent__Output)[];
  /**
   * The key's record in the backend, when a key was asked for.
   */
  'backendVersion': (number);
  'generation': (number);
}
