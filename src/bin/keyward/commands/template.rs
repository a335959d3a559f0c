//! The templates of `keyward render`: `{{ ENV/NAME }}` (the primary) or
//! `{{ ENV/NAME.FIELD }}`, parsed once, then filled with every new state of
//! the keys.

use keyward::secret::KeyRef;
use keyward_client::KeySet;
use zeroize::Zeroizing;

/// One `{{ … }}` of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Primary,
    Fallback,
    Version,
    Fingerprint,
}

/// A stretch of text, or the field of a key (by its index in the
/// template's keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(String),
    Key(usize, Field),
}

/// Parses `text`: `{{ ENV/NAME }}` (the primary), or `{{ ENV/NAME.FIELD }}`
/// with FIELD one of primary, fallback (or the primary when there is none),
/// version, fingerprint. Returns the pieces and the keys in order of first
/// use.
pub(crate) fn parse_template(text: &str, origin: &str) -> Result<(Vec<Piece>, Vec<KeyRef>), String> {
    let mut pieces = Vec::new();
    let mut keys: Vec<KeyRef> = Vec::new();
    let mut rest = text;
    let line_of = |rest: &str| text[..text.len() - rest.len()].matches('\n').count() + 1;
    while let Some(start) = rest.find("{{") {
        pieces.push(Piece::Text(rest[..start].to_owned()));
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "{origin}:{}: '{{{{' without a closing '}}}}'",
                line_of(&rest[start..])
            ));
        };
        let inner = after[..end].trim();
        let (key, field) = match inner.rsplit_once('.') {
            Some((k, f)) if matches!(f, "primary" | "fallback" | "version" | "fingerprint") => (k, f),
            _ => (inner, "primary"),
        };
        let key: KeyRef = key.parse().map_err(|e| {
            format!(
                "{origin}:{}: {{{{ {inner} }}}}: {e}; write {{{{ ENV/NAME }}}} or {{{{ ENV/NAME.primary|fallback|version|fingerprint }}}}",
                line_of(&rest[start..])
            )
        })?;
        let index = match keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                keys.push(key);
                keys.len() - 1
            }
        };
        let field = match field {
            "fallback" => Field::Fallback,
            "version" => Field::Version,
            "fingerprint" => Field::Fingerprint,
            _ => Field::Primary,
        };
        pieces.push(Piece::Key(index, field));
        rest = &after[end + 2..];
    }
    pieces.push(Piece::Text(rest.to_owned()));
    Ok((pieces, keys))
}

/// The template filled with `sets`, one per key of the template.
pub(crate) fn render_bytes(pieces: &[Piece], sets: &[KeySet]) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut out = Zeroizing::new(Vec::new());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
            Piece::Key(i, field) => {
                let set = &sets[*i];
                let primary = &set.primary;
                match field {
                    Field::Primary => out.extend_from_slice(primary.secret.expose()),
                    Field::Fallback => out.extend_from_slice(set.fallback.as_ref().unwrap_or(primary).secret.expose()),
                    Field::Version => out.extend_from_slice(primary.version.to_string().as_bytes()),
                    Field::Fingerprint => out.extend_from_slice(primary.fingerprint.as_bytes()),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_keys_and_fields() {
        let (pieces, keys) =
            parse_template("a={{ prod/a }}\nb={{prod/b.fallback}} v{{ prod/a.version }}\n", "t").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].to_string(), "prod/a");
        assert_eq!(
            pieces,
            [
                Piece::Text("a=".into()),
                Piece::Key(0, Field::Primary),
                Piece::Text("\nb=".into()),
                Piece::Key(1, Field::Fallback),
                Piece::Text(" v".into()),
                Piece::Key(0, Field::Version),
                Piece::Text("\n".into()),
            ]
        );
    }

    #[test]
    fn template_mistakes_name_the_line() {
        let e = parse_template("ok\nx={{ prod/a\n", "t.tmpl").unwrap_err();
        assert!(e.starts_with("t.tmpl:2:"), "{e}");
        let e = parse_template("\n\n{{ Prod/A }}", "t.tmpl").unwrap_err();
        assert!(e.starts_with("t.tmpl:3:") && e.contains("ENV/NAME"), "{e}");
    }
}
