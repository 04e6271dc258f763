//! Signing and verification keys as cosign has them: public keys as PEM
//! (`-----BEGIN PUBLIC KEY-----`, what `cosign generate-key-pair` writes to
//! `cosign.pub`), private keys as cosign's encrypted PEM (`ENCRYPTED
//! SIGSTORE PRIVATE KEY`: scrypt + NaCl secretbox around PKCS#8, the
//! password in `COSIGN_PASSWORD`) or plain PKCS#8 / SEC1 PEM (what
//! `openssl` writes). ECDSA P-256 only: cosign's default, and what runner
//! signs with.

use base64::Engine as _;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::der::pem;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use sha2::Digest as _;
use std::path::{Path, PathBuf};

/// A key file is a few hundred bytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// The environment variable cosign reads a key's password from.
pub const PASSWORD_VAR: &str = "COSIGN_PASSWORD";

/// A public key the operator trusts to sign plugins.
#[derive(Clone)]
pub struct TrustedKey {
    /// Where it came from, for messages.
    pub path: PathBuf,
    key: VerifyingKey,
    /// `sha256:` of its DER SubjectPublicKeyInfo.
    pub fingerprint: String,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({}, {})", self.path.display(), self.short())
    }
}

impl TrustedKey {
    /// The public key in PEM file `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        let (label, der) = decode_pem(path, &text)?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::Unsupported {
                path: path.into(),
                found: format!("a \"{label}\" PEM block"),
                wanted: "a public key (-----BEGIN PUBLIC KEY-----, as cosign.pub)",
            });
        }
        Self::from_der(path, &der)
    }

    fn from_der(path: &Path, der: &[u8]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_public_key_der(der).map_err(|e| KeyError::Unsupported {
            path: path.into(),
            found: format!("a key runner cannot use ({e})"),
            wanted: "an ECDSA P-256 public key (cosign's default)",
        })?;
        Ok(Self::new(path, key))
    }

    fn new(path: &Path, key: VerifyingKey) -> Self {
        let der = key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        Self {
            path: path.into(),
            key,
            fingerprint: format!("sha256:{:x}", sha2::Sha256::digest(der)),
        }
    }

    /// `sha256:` and 16 hex digits, for messages.
    pub fn short(&self) -> &str {
        &self.fingerprint[..("sha256:".len() + 16)]
    }

    /// Whether `signature` (ASN.1 DER) is this key's ECDSA signature of
    /// `payload` (SHA-256).
    pub fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        p256::ecdsa::Signature::from_der(signature)
            .is_ok_and(|signature| self.key.verify(payload, &signature).is_ok())
    }
}

/// A private key to sign plugins with.
pub struct PrivateKey {
    key: SigningKey,
    pub public: TrustedKey,
}

impl PrivateKey {
    /// The private key in PEM file `path`; an encrypted cosign key is
    /// opened with `password` (from `COSIGN_PASSWORD`).
    pub fn load(path: &Path, password: Option<&str>) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        let (label, der) = decode_pem(path, &text)?;
        let invalid = |e: &dyn std::fmt::Display| KeyError::Unsupported {
            path: path.into(),
            found: format!("a key runner cannot use ({e})"),
            wanted: "an ECDSA P-256 private key (cosign generate-key-pair, or openssl ecparam -name prime256v1)",
        };
        let key = match label.as_str() {
            "PRIVATE KEY" => SigningKey::from_pkcs8_der(&der).map_err(|e| invalid(&e))?,
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&der)
                .map(SigningKey::from)
                .map_err(|e| invalid(&e))?,
            "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
                let password =
                    password.ok_or_else(|| KeyError::NoPassword { path: path.into() })?;
                let plain = decrypt_cosign(path, &der, password)?;
                SigningKey::from_pkcs8_der(&plain).map_err(|e| invalid(&e))?
            }
            other => {
                return Err(KeyError::Unsupported {
                    path: path.into(),
                    found: format!("a \"{other}\" PEM block"),
                    wanted: "a private key (PRIVATE KEY, EC PRIVATE KEY or cosign's ENCRYPTED SIGSTORE PRIVATE KEY)",
                });
            }
        };
        let public = TrustedKey::new(path, *key.verifying_key());
        Ok(Self { key, public })
    }

    /// This key's ECDSA P-256 (SHA-256) signature of `payload`, ASN.1 DER.
    /// Deterministic (RFC 6979): signing the same payload again gives the
    /// same signature.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        let signature: p256::ecdsa::Signature = self.key.sign(payload);
        signature.to_der().as_bytes().to_vec()
    }
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    let read = |source| KeyError::Read {
        path: path.into(),
        source,
    };
    use std::os::unix::fs::OpenOptionsExt;
    // A FIFO or device named as a key must not block or stream forever.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read)?;
    if !file.metadata().map_err(read)?.is_file() {
        return Err(KeyError::NotPem { path: path.into() });
    }
    let bytes = super::store::read_capped(file, MAX_KEY_FILE_BYTES).map_err(read)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::NotPem { path: path.into() });
    }
    String::from_utf8(bytes).map_err(|_| KeyError::NotPem { path: path.into() })
}

fn decode_pem(path: &Path, text: &str) -> Result<(String, Vec<u8>), KeyError> {
    // The first PEM block, whatever surrounds it (cosign.key has none).
    let start = text
        .find("-----BEGIN ")
        .ok_or_else(|| KeyError::NotPem { path: path.into() })?;
    pem::decode_vec(text[start..].trim_end().as_bytes())
        .map(|(label, der)| (label.to_string(), der))
        .map_err(|_| KeyError::NotPem { path: path.into() })
}

/// cosign's encrypted private key: JSON naming the KDF (scrypt) and cipher
/// (NaCl secretbox), with the PKCS#8 key as ciphertext.
#[derive(serde::Deserialize, serde::Serialize)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Cipher {
    name: String,
    nonce: String,
}

fn decrypt_cosign(path: &Path, json: &[u8], password: &str) -> Result<Vec<u8>, KeyError> {
    let bad = |detail: &str| KeyError::Unsupported {
        path: path.into(),
        found: format!("an encrypted key runner cannot open ({detail})"),
        wanted: "cosign's encrypted key (scrypt, nacl/secretbox)",
    };
    let envelope: EncryptedKey =
        serde_json::from_slice(json).map_err(|_| bad("not cosign's JSON envelope"))?;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.decode(text);
    // Only the parameters cosign writes: a key file must not be able to
    // make runner spend gigabytes of memory deriving its key.
    let ScryptParams { n, r, p } = envelope.kdf.params;
    if envelope.kdf.name != "scrypt" || !matches!(n, 32768 | 65536) || r != 8 || p != 1 {
        return Err(bad("unexpected key derivation parameters"));
    }
    if envelope.cipher.name != "nacl/secretbox" {
        return Err(bad("unexpected cipher"));
    }
    let salt = b64(&envelope.kdf.salt).map_err(|_| bad("bad salt"))?;
    let nonce = b64(&envelope.cipher.nonce).map_err(|_| bad("bad nonce"))?;
    let ciphertext = b64(&envelope.ciphertext).map_err(|_| bad("bad ciphertext"))?;
    if nonce.len() != 24 {
        return Err(bad("bad nonce"));
    }
    let key = derive_key(password, &salt, n).map_err(|_| bad("bad key derivation parameters"))?;
    use crypto_secretbox::aead::{Aead, KeyInit};
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(&key));
    cipher
        .decrypt(
            crypto_secretbox::Nonce::from_slice(&nonce),
            ciphertext.as_slice(),
        )
        .map_err(|_| KeyError::WrongPassword { path: path.into() })
}

fn derive_key(
    password: &str,
    salt: &[u8],
    n: u64,
) -> Result<[u8; 32], scrypt::errors::InvalidParams> {
    let params = scrypt::Params::new(n.trailing_zeros() as u8, 8, 1, 32)?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut key)
        .map_err(|_| scrypt::errors::InvalidParams)?;
    Ok(key)
}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key {} is not a PEM file (-----BEGIN ...-----)", path.display())]
    NotPem { path: PathBuf },
    #[error("key {} is {found}; runner wants {wanted}", path.display())]
    Unsupported {
        path: PathBuf,
        found: String,
        wanted: &'static str,
    },
    #[error("key {} is encrypted; give its password in {PASSWORD_VAR} (as cosign reads it)", path.display())]
    NoPassword { path: PathBuf },
    #[error("key {}: the password in {PASSWORD_VAR} does not open it", path.display())]
    WrongPassword { path: PathBuf },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    /// A fixed test key (never a real one).
    pub(crate) fn test_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    /// Write `key` as cosign's encrypted PEM, as `cosign generate-key-pair` does.
    pub(crate) fn write_cosign_key(path: &Path, key: &SigningKey, password: &str) {
        let salt = [3u8; 32];
        let nonce = [5u8; 24];
        let derived = derive_key(password, &salt, 32768).unwrap();
        use crypto_secretbox::aead::{Aead, KeyInit};
        let cipher =
            crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(&derived));
        let der = key.to_pkcs8_der().unwrap();
        let ciphertext = cipher
            .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), der.as_bytes())
            .unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let json = serde_json::to_vec(&EncryptedKey {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams {
                    n: 32768,
                    r: 8,
                    p: 1,
                },
                salt: b64(&salt),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: b64(&nonce),
            },
            ciphertext: b64(&ciphertext),
        })
        .unwrap();
        let pem =
            pem::encode_string("ENCRYPTED SIGSTORE PRIVATE KEY", LineEnding::LF, &json).unwrap();
        std::fs::write(path, pem).unwrap();
    }

    pub(crate) fn write_public(path: &Path, key: &SigningKey) {
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        std::fs::write(path, pem).unwrap();
    }

    #[test]
    fn keys_load_from_every_format_and_sign_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(7);
        let public = dir.path().join("cosign.pub");
        write_public(&public, &key);
        let trusted = TrustedKey::load(&public).unwrap();

        let pkcs8 = dir.path().join("pkcs8.pem");
        std::fs::write(&pkcs8, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let encrypted = dir.path().join("cosign.key");
        write_cosign_key(&encrypted, &key, "s3cret");
        for private in [
            PrivateKey::load(&pkcs8, None).unwrap(),
            PrivateKey::load(&encrypted, Some("s3cret")).unwrap(),
        ] {
            assert_eq!(private.public.fingerprint, trusted.fingerprint);
            let signature = private.sign(b"payload");
            assert_eq!(signature, private.sign(b"payload"), "deterministic");
            assert!(trusted.verifies(b"payload", &signature));
            assert!(!trusted.verifies(b"payl0ad", &signature));
        }
        let other = dir.path().join("other.pub");
        write_public(&other, &test_key(9));
        let other = TrustedKey::load(&other).unwrap();
        assert_ne!(other.fingerprint, trusted.fingerprint);
        let signature = PrivateKey::load(&pkcs8, None).unwrap().sign(b"payload");
        assert!(!other.verifies(b"payload", &signature));
        assert!(!trusted.verifies(b"payload", b"\x30\x02garbage"));
    }

    #[test]
    fn unusable_keys_are_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(7);
        let encrypted = dir.path().join("cosign.key");
        write_cosign_key(&encrypted, &key, "right");
        let e = PrivateKey::load(&encrypted, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("COSIGN_PASSWORD"), "{e}");
        let e = PrivateKey::load(&encrypted, Some("wrong"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not open it"), "{e}");
        // A private key where a public one belongs, and text that is no key.
        let e = TrustedKey::load(&encrypted).unwrap_err().to_string();
        assert!(e.contains("wants a public key"), "{e}");
        let junk = dir.path().join("junk.pub");
        std::fs::write(&junk, "not a key").unwrap();
        assert!(matches!(
            TrustedKey::load(&junk),
            Err(KeyError::NotPem { .. })
        ));
        assert!(matches!(
            TrustedKey::load(&dir.path().join("absent.pub")),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn an_encrypted_key_cannot_ask_for_unbounded_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.key");
        let json = br#"{"kdf":{"name":"scrypt","params":{"N":4294967296,"r":8,"p":1},"salt":"AA=="},"cipher":{"name":"nacl/secretbox","nonce":"AA=="},"ciphertext":"AA=="}"#;
        let pem =
            pem::encode_string("ENCRYPTED SIGSTORE PRIVATE KEY", LineEnding::LF, json).unwrap();
        std::fs::write(&path, pem).unwrap();
        let e = PrivateKey::load(&path, Some("x"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unexpected key derivation parameters"), "{e}");
    }
}
