//! The password file, as libpq reads it (PostgreSQL's docs, "The Password
//! File"): lines `hostname:port:database:username:password`, `*` matching
//! anything, `\:` and `\\` escapes, `#` comments; the first line that
//! matches gives the password. A file others may read (any group or other
//! permission bit) is ignored with a warning, as libpq ignores it; a
//! missing one silently.

use std::path::Path;

use tracing::warn;

/// The password `path` gives `user` on `database` at `host:port`, if any.
pub fn password(path: &Path, host: &str, port: &str, database: &str, user: &str) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
            // The path is the operator's own setting, not a secret.
            warn!(
                file = %path.display(),
                "password file has group or world access (or is not a file): ignored, as libpq ignores it; chmod 0600 it"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    lookup(&text, host, port, database, user)
}

/// The password of the first line of `contents` that matches.
pub fn lookup(
    contents: &str,
    host: &str,
    port: &str,
    database: &str,
    user: &str,
) -> Option<String> {
    contents.lines().find_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let rest = field(line, host)?;
        let rest = field(rest, port)?;
        let rest = field(rest, database)?;
        let rest = field(rest, user)?;
        Some(unescape(rest))
    })
}

/// The rest of `line` after its first field, when that field is `*` or
/// equals `want` (escapes read).
fn field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = want.chars();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        let (c, escaped) = if c == '\\' {
            (chars.next()?.1, true)
        } else {
            (c, false)
        };
        if c == ':' && !escaped {
            return want.next().is_none().then(|| &line[i + 1..]);
        }
        if want.next() != Some(c) {
            return None;
        }
    }
    None
}

/// The password field: up to an unescaped `:`, escapes read.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_that_matches_gives_the_password() {
        let file = "# a comment\n\
                    db.example:5432:logins:etl:first\n\
                    *:5432:*:etl:second\n\
                    h\\:x:*:*:odd:p\\:w\\\\d\r\n\
                    *:*:*:*:anyone\n";
        assert_eq!(
            lookup(file, "db.example", "5432", "logins", "etl").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(file, "other", "5432", "logins", "etl").as_deref(),
            Some("second")
        );
        assert_eq!(
            lookup(file, "h:x", "6432", "d", "odd").as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            lookup(file, "other", "6432", "x", "etl").as_deref(),
            Some("anyone")
        );
        assert_eq!(
            lookup("db:5432:x:etl", "db", "5432", "x", "etl"),
            None,
            "four fields"
        );
        assert_eq!(lookup("", "db", "5432", "x", "etl"), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_read_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("login-etl-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(password(&path, "h", "5432", "d", "u"), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            password(&path, "h", "5432", "d", "u").as_deref(),
            Some("pw")
        );
        assert_eq!(password(&dir.join("none"), "h", "5432", "d", "u"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
