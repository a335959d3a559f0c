//! Records sealed for a shared backend: the fleet keeps each key's record
//! encrypted to every agent of the fleet, ASCII-armored, so that any of
//! them (and `age -d` with any of their identities) can read it and the
//! backend never can.

use std::io;

use age::x25519;

use super::{encrypt_to, Store, StoreError};
use crate::keyset::KeySetState;
use crate::secret::KeyRef;

impl Store {
    /// Encrypts a record to this agent, the extra recipients and `more`
    /// (the fleet's other agents, none of them among the first), ASCII-armored:
    /// the form kept in a shared backend, readable with `age -d` by any of them.
    pub fn seal_armored(&self, plaintext: &[u8], more: &[x25519::Recipient]) -> Result<String, StoreError> {
        let armored = encrypt_to(self.recipients.iter().chain(more), plaintext, true)
            .map_err(|e| StoreError::Invalid(format!("cannot encrypt a record for the backend: {e}")))?;
        String::from_utf8(armored)
            .map_err(|e| StoreError::Invalid(format!("cannot encrypt a record for the backend: {e}")))
    }

    /// Decrypts and decodes a record sealed by [`Store::seal_armored`] (by
    /// any agent of the fleet) as the state of `key`.
    pub fn open_armored(&self, key: KeyRef, armored: &str) -> Result<KeySetState, StoreError> {
        let mut binary = zeroize::Zeroizing::new(Vec::with_capacity(armored.len()));
        io::Read::read_to_end(&mut age::armor::ArmoredReader::new(armored.as_bytes()), &mut binary).map_err(|e| {
            StoreError::Invalid(format!(
                "the record is not an age file ({e}): it was not written by keyward"
            ))
        })?;
        self.decrypt_decode(key, &binary, |e| {
            format!(
                "this agent cannot decrypt it ({e}): it is not encrypted to this agent's identity {}; add that recipient to every agent's [backend] recipients, then run `keyward fleet reseal` on an agent that can read it",
                self.identity.recipient()
            )
        })
    }
}
