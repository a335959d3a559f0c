// Original file: proto/keyward/v1/keys.proto


export interface AuthFailureAck {
}

export interface AuthFailureAck__Output {
}
