//! A token: what a masked value is stored as.

use std::fmt;

/// Length of a token in characters (hex of a 32-byte digest).
pub const TOKEN_LEN: usize = 64;

/// A 64-character lowercase hex token, stored inline (no heap allocation).
/// Computed by `crate::privacy::masking`; the contract only carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    /// The token of a 32-byte digest: its lowercase hex.
    pub fn of_digest(digest: &[u8; 32]) -> Self {
        let mut out = [0u8; TOKEN_LEN];
        hex::encode_to_slice(digest, &mut out).expect("64 bytes hold a 32-byte digest in hex");
        Token(out)
    }

    /// A token written as text (64 lowercase hex characters); `None` for
    /// anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != TOKEN_LEN || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut out = [0u8; TOKEN_LEN];
        out.copy_from_slice(bytes);
        Some(Token(out))
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        // Only ever filled by `hex::encode_to_slice`: ASCII.
        std::str::from_utf8(&self.0).expect("hex output is ASCII")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
