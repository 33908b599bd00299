//! The command line as `/__serverz` shows it: secrets redacted, nothing lost to encoding.
//!
//! A flag whose name says it holds a secret (`--db-password x`, `--api-key=x`, `--token x`...)
//! has its value replaced, and so has the userinfo of any URL (`postgres://u:pw@host` →
//! `postgres://<redacted>@host`). Bytes that are not UTF-8 are shown as `\xNN`, so two
//! different arguments never look the same.

use std::ffi::OsString;

const REDACTED: &str = "<redacted>";

/// Words that make a flag's value a secret.
const SECRET_WORDS: [&str; 8] = [
    "secret",
    "token",
    "password",
    "passwd",
    "key",
    "auth",
    "credential",
    "cookie",
];

/// The command line of this process, redacted.
pub(crate) fn shown() -> Vec<String> {
    redact(std::env::args_os())
}

fn redact(args: impl IntoIterator<Item = OsString>) -> Vec<String> {
    let mut shown = Vec::new();
    let mut value_is_secret = false;
    for arg in args {
        let text = lossless(&arg);
        if std::mem::take(&mut value_is_secret) {
            shown.push(REDACTED.to_owned());
            continue;
        }
        let Some(flag) = text.strip_prefix('-') else {
            shown.push(without_userinfo(&text));
            continue;
        };
        match flag.split_once('=') {
            Some((name, _)) if is_secret(name) => shown.push(format!("-{name}={REDACTED}")),
            Some((name, value)) => shown.push(format!("-{name}={}", without_userinfo(value))),
            None => {
                value_is_secret = is_secret(flag);
                shown.push(text);
            }
        }
    }
    shown
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// `scheme://user:pw@host/...` → `scheme://<redacted>@host/...`; anything else as it is.
fn without_userinfo(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]),
        None => text.to_owned(),
    }
}

/// UTF-8 as it is, every other byte as `\xNN`.
fn lossless(arg: &OsString) -> String {
    let mut text = String::new();
    for chunk in arg.as_encoded_bytes().utf8_chunks() {
        text.push_str(chunk.valid());
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(args: &[&str]) -> Vec<String> {
        redact(args.iter().map(OsString::from))
    }

    #[test]
    fn secret_flags_and_url_userinfo_are_redacted() {
        assert_eq!(
            shown(&[
                "multi-server",
                "--db-password",
                "hunter2",
                "--api-key=abc",
                "--flows-ports",
                "3400",
                "--db-url=postgres://u:pw@db:5432/x",
                "https://user@example.com/path@x",
                "--AUTH-TOKEN",
                "t",
            ]),
            [
                "multi-server",
                "--db-password",
                "<redacted>",
                "--api-key=<redacted>",
                "--flows-ports",
                "3400",
                "--db-url=postgres://<redacted>@db:5432/x",
                "https://<redacted>@example.com/path@x",
                "--AUTH-TOKEN",
                "<redacted>",
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn bytes_that_are_not_utf8_are_escaped_not_lost() {
        use std::os::unix::ffi::OsStringExt;
        let arg = OsString::from_vec(b"caf\xc3\xa9-\xff\xfe".to_vec());
        assert_eq!(redact([arg]), ["café-\\xff\\xfe"]);
    }
}
