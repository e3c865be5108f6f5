//! The API server's name rules: port names, DNS labels and subdomains, label keys and
//! values, annotations.

use serde_json::{Map, Value};

use super::{err, Res};

/// An IANA service name: 1-15 characters of a-z, 0-9 and '-', at least one letter, no
/// leading, trailing or double hyphen.
pub fn check_port_name(s: &str, path: &str) -> Res<()> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "{s:?} is not a port name (1-15 of a-z, 0-9 and inner single '-', with a letter)"
            ),
        ))
    }
}

/// One dot-separated part of an RFC 1123 name: a-z, 0-9 and '-', alphanumeric at both ends.
fn is_dns_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS label (RFC 1123): namespace names.
pub fn check_label_name(s: &str, path: &str) -> Res<()> {
    if s.len() <= 63 && is_dns_part(s) {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "{s:?} is not a DNS label (1-63 of a-z, 0-9 and '-', alphanumeric at both ends)"
            ),
        ))
    }
}

/// The API server's DNS subdomain: at most 253 characters, dot-separated parts of a-z,
/// 0-9 and '-' (it does not hold each part to 63, as RFC 1123 would).
fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_part)
}

/// A DNS subdomain (RFC 1123, as the API server checks it): object names.
pub fn check_subdomain(s: &str, path: &str) -> Res<()> {
    if is_subdomain(s) {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "{s:?} is not a DNS subdomain (at most 253 of a-z, 0-9, '-' and '.', alphanumeric around each '.')"
            ),
        ))
    }
}

fn is_label_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A qualified name: `[prefix/]name`, the prefix a DNS subdomain.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    is_label_segment(name) && prefix.is_none_or(is_subdomain)
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn check_label_key(s: &str, path: &str) -> Res<()> {
    if is_qualified_name(s) {
        Ok(())
    } else {
        Err(err(path, format!("{s:?} is not a valid label key")))
    }
}

/// A label value: empty, or up to 63 characters of a-z, A-Z, 0-9, '-', '_', '.',
/// alphanumeric at both ends.
pub fn check_label_value(s: &str, path: &str) -> Res<()> {
    if s.is_empty() || is_label_segment(s) {
        Ok(())
    } else {
        Err(err(path, format!("{s:?} is not a valid label value")))
    }
}

/// The most the API server takes in one object's annotations, keys and values together.
const ANNOTATIONS_MAX: usize = 256 * 1024;

/// `metadata.annotations` as the API server checks them (weft keeps none of them): string
/// values, keys that are qualified names once lower-cased, 256 KiB in all.
pub fn check_annotations(v: &Value, path: &str) -> Res<()> {
    let m: &Map<String, Value> = match v {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        _ => return Err(err(path, "expected an object")),
    };
    let mut total = 0;
    for (k, v) in m {
        let p = format!("{path}[{k:?}]");
        if !is_qualified_name(&k.to_ascii_lowercase()) {
            return Err(err(&p, format!("{k:?} is not a valid annotation key")));
        }
        let v = match v {
            Value::String(s) => s.as_str(),
            Value::Null => "",
            _ => return Err(err(&p, "an annotation's value is a string")),
        };
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_MAX {
        return Err(err(
            path,
            format!("{total} bytes, more than the {ANNOTATIONS_MAX} the API takes"),
        ));
    }
    Ok(())
}
