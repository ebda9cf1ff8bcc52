//! Request paths made canonical before anything looks at them (routes,
//! policies) and before they are forwarded, as Istio's `BASE` normalization
//! does: `\` becomes `/`, percent-encoded unreserved characters are decoded
//! (other escapes are kept, upper-cased), dot segments are removed, and the
//! query and fragment are left out of what is normalized. `%00` and broken
//! escapes are refused. `MERGE_SLASHES` also collapses `//`;
//! `DECODE_AND_MERGE_SLASHES` also decodes `%2F` and `%5C` first. So a
//! policy on `/admin` cannot be walked around with `/public/../admin`,
//! `/%61dmin` or `\admin`.

/// How far paths are normalized (a mesh option; `BASE` by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PathNormalization {
    #[default]
    #[value(name = "BASE")]
    Base,
    #[value(name = "MERGE_SLASHES")]
    MergeSlashes,
    #[value(name = "DECODE_AND_MERGE_SLASHES")]
    DecodeAndMergeSlashes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadPath {
    #[error("the path contains an encoded NUL (%00)")]
    Nul,
    #[error("the path contains a broken percent escape")]
    BadEscape,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escapes that normalization decodes; keeps the others with
/// upper-case hex digits.
fn decode(path: &str, slashes: bool) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(BadPath::BadEscape);
                };
                let value = h * 16 + l;
                if value == 0 {
                    return Err(BadPath::Nul);
                }
                if is_unreserved(value) || (slashes && (value == b'/' || value == b'\\')) {
                    out.push(if value == b'\\' { b'/' } else { value });
                } else {
                    out.extend_from_slice(format!("%{value:02X}").as_bytes());
                }
                i += 3;
            }
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII escapes were decoded into single bytes, so the result is
    // still UTF-8 wherever the input was.
    String::from_utf8(out).map_err(|_| BadPath::BadEscape)
}

/// RFC 3986 5.2.4: `.` and `..` segments removed.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..") || path == "." || path == "..";
    for segment in path.split('/') {
        match segment {
            "." => {}
            ".." => {
                // Never above the root.
                if segments.len() > 1 {
                    segments.pop();
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = segments.join("/");
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Whether `path` is already what [`normalize`] would make of it, told
/// without allocating (the common request): a path from `/` with no
/// escape, backslash, fragment or dot segment (and, past `BASE`, no
/// `//`). A `false` says only that `normalize` must decide.
pub fn is_canonical(path: &str, mode: PathNormalization) -> bool {
    path.starts_with('/')
        && !path.bytes().any(|b| matches!(b, b'%' | b'\\' | b'#'))
        && !path.split('/').any(|s| s == "." || s == "..")
        && (mode == PathNormalization::Base || !path.contains("//"))
}

/// `path` (without the query) made canonical.
pub fn normalize(path: &str, mode: PathNormalization) -> Result<String, BadPath> {
    let path = path.split('#').next().unwrap_or_default();
    if !path.starts_with('/') && !path.starts_with('\\') {
        // `*` (OPTIONS) and other non-path targets are left as they are.
        return Ok(path.to_owned());
    }
    let decoded = decode(path, mode == PathNormalization::DecodeAndMergeSlashes)?;
    let merged = match mode {
        PathNormalization::Base => decoded,
        _ => merge_slashes(&decoded),
    };
    Ok(remove_dot_segments(&merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_told_without_normalizing_them() {
        use PathNormalization::*;
        for (path, mode, canonical) in [
            ("/", Base, true),
            ("/a/b.c/d..e/.f", Base, true),
            ("/a//b", Base, true),
            ("/a//b", MergeSlashes, false),
            ("/a/./b", Base, false),
            ("/a/..", Base, false),
            ("/.", Base, false),
            ("/%61", Base, false),
            ("\\a", Base, false),
            ("/a#f", Base, false),
            ("*", Base, false),
            ("", Base, false),
        ] {
            assert_eq!(is_canonical(path, mode), canonical, "{path:?} {mode:?}");
            if canonical {
                assert_eq!(normalize(path, mode).as_deref(), Ok(path), "{path:?}");
            }
        }
    }

    #[test]
    fn paths_are_made_canonical_as_istios_base_does() {
        use PathNormalization::*;
        let cases: [(&str, PathNormalization, Result<&str, BadPath>); 22] = [
            ("/a/b", Base, Ok("/a/b")),
            ("/public/../admin", Base, Ok("/admin")),
            ("/./admin", Base, Ok("/admin")),
            ("/a/b/..", Base, Ok("/a/")),
            ("/../../admin", Base, Ok("/admin")),
            ("/%61dmin", Base, Ok("/admin")),
            ("/%2e%2e/admin", Base, Ok("/admin")),
            ("/a/%2E./admin", Base, Ok("/admin")),
            ("\\admin", Base, Ok("/admin")),
            ("/public\\..\\admin", Base, Ok("/admin")),
            ("/a%2fb", Base, Ok("/a%2Fb")),
            ("/a%2Fb", DecodeAndMergeSlashes, Ok("/a/b")),
            ("/a%5Cb", DecodeAndMergeSlashes, Ok("/a/b")),
            ("//admin", Base, Ok("//admin")),
            ("//admin", MergeSlashes, Ok("/admin")),
            ("/a//b///c", MergeSlashes, Ok("/a/b/c")),
            ("/x%20y", Base, Ok("/x%20y")),
            ("/caf%c3%a9", Base, Ok("/caf%C3%A9")),
            ("/a%00b", Base, Err(BadPath::Nul)),
            ("/a%zz", Base, Err(BadPath::BadEscape)),
            ("/a%4", Base, Err(BadPath::BadEscape)),
            ("*", Base, Ok("*")),
        ];
        for (path, mode, expected) in cases {
            assert_eq!(
                normalize(path, mode),
                expected.map(str::to_owned),
                "{path} ({mode:?})"
            );
        }
    }
}
