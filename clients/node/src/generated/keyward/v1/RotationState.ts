// Original file: proto/keyward/v1/keys.proto

export const RotationState = {
  ROTATION_STATE_UNSPECIFIED: 'ROTATION_STATE_UNSPECIFIED',
  /**
   * Only a primary.
   */
  STEADY: 'STEADY',
  /**
   * A new key was staged: primary is current, fallback is the new key.
   */
  STAGED: 'STAGED',
  /**
   * The new key was promoted: primary is new, fallback is the old key.
   */
  PROMOTED: 'PROMOTED',
} as const;

export type RotationState =
  | 'ROTATION_STATE_UNSPECIFIED'
  | 0
  /**
   * Only a primary.
   */
  | 'STEADY'
  | 1
  /**
   * A new key was staged: primary is current, fallback is the new key.
   */
  | 'STAGED'
  | 2
  /**
   * The new key was promoted: primary is new, fallback is the old key.
   */
  | 'PROMOTED'
  | 3

export type RotationState__Output = typeof RotationState[keyof typeof RotationState]
