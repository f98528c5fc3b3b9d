//! The syntax of what the registry stores, checked before anything is proposed: a bad name never
//! costs a round trip between regions, and every rule has its own error saying how to fix it.

use std::fmt;

/// Fewest characters of a WeChat ID (as WeChat).
pub const MIN_WXID_CHARS: usize = 6;
/// Most characters of a WeChat ID (as WeChat).
pub const MAX_WXID_CHARS: usize = 20;
/// Most bytes of a uid; matches the store's default `max_uid_bytes`.
pub const MAX_UID_BYTES: usize = 128;
/// Most bytes of a region name in the home directory.
pub const MAX_REGION_BYTES: usize = 64;

/// IDs that would read as the service itself or as nobody; refused as a whole ID.
pub const RESERVED_WORDS: &[&str] = &[
    "anonymous",
    "everyone",
    "moderator",
    "nobody",
    "registry",
    "security",
    "service",
    "undefined",
];

/// Words an ID may not even begin with (`admin_zhang`, `wechat-team`, `support01`), since those
/// are how impostors pose as staff.
pub const RESERVED_PREFIXES: &[&str] = &[
    "admin", "homeport", "official", "root", "support", "system", "tencent", "wechat", "weixin",
];

/// A syntactically valid WeChat ID, normalized to lowercase: IDs differing only in case are the
/// same ID (`SzDy01` and `szdy01` cannot have two owners).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WxId(String);

impl WxId {
    /// Checks every rule, in order: length, first character, characters, reserved words.
    pub fn parse(input: &str) -> Result<WxId, WxidError> {
        let shown = shown(input);
        let chars = input.chars().count();
        if chars < MIN_WXID_CHARS {
            return Err(WxidError::TooShort { id: shown, chars });
        }
        if chars > MAX_WXID_CHARS {
            return Err(WxidError::TooLong { id: shown, chars });
        }
        let first = input.chars().next().expect("length checked");
        if !first.is_ascii_alphabetic() {
            return Err(WxidError::MustStartWithLetter { id: shown, first });
        }
        if let Some((position, ch)) = input
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(WxidError::BadCharacter {
                id: shown,
                ch,
                position: position + 1,
            });
        }
        let id = input.to_ascii_lowercase();
        if let Some(word) = RESERVED_WORDS.iter().find(|w| id == **w) {
            return Err(WxidError::ReservedWord { id: shown, word });
        }
        if let Some(word) = RESERVED_PREFIXES.iter().find(|w| id.starts_with(**w)) {
            return Err(WxidError::ReservedPrefix { id: shown, word });
        }
        Ok(WxId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for WxId {
    type Err = WxidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WxId::parse(s)
    }
}

/// Input is echoed in errors, cut short so a huge request cannot make a huge error.
fn shown(input: &str) -> String {
    const MAX_SHOWN_CHARS: usize = 40;
    if input.chars().count() <= MAX_SHOWN_CHARS {
        input.to_owned()
    } else {
        let mut s: String = input.chars().take(MAX_SHOWN_CHARS).collect();
        s.push('…');
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WxidError {
    #[error(
        "WeChat ID {id:?} has {chars} characters; it needs at least {MIN_WXID_CHARS} \
         (letters, digits, '_' or '-')"
    )]
    TooShort { id: String, chars: usize },
    #[error("WeChat ID {id:?} has {chars} characters; it may have at most {MAX_WXID_CHARS}")]
    TooLong { id: String, chars: usize },
    #[error("WeChat ID {id:?} starts with {first:?}; it must start with a letter a-z or A-Z")]
    MustStartWithLetter { id: String, first: char },
    #[error(
        "WeChat ID {id:?} contains {ch:?} at character {position}; only letters a-z and A-Z, \
         digits 0-9, '_' and '-' are allowed"
    )]
    BadCharacter {
        id: String,
        ch: char,
        position: usize,
    },
    #[error("WeChat ID {id:?} is the reserved word {word:?}; choose another ID")]
    ReservedWord { id: String, word: &'static str },
    #[error(
        "WeChat ID {id:?} begins with {word:?}, which is reserved for the service's own \
         accounts; choose an ID that does not begin with it"
    )]
    ReservedPrefix { id: String, word: &'static str },
}

/// What is wrong with a uid or region name given to the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "{what} {value:?} is {len} bytes; it must be 1..={max} bytes of printable ASCII without \
         spaces"
    )]
    Length {
        what: &'static str,
        value: String,
        len: usize,
        max: usize,
    },
    #[error("{what} {value:?} contains {ch:?}; it must be printable ASCII without spaces{extra}")]
    Character {
        what: &'static str,
        value: String,
        ch: char,
        extra: &'static str,
    },
}

/// A uid: 1..=[`MAX_UID_BYTES`] bytes of printable ASCII without spaces (the store's uids).
pub fn check_uid(uid: &str) -> Result<(), NameError> {
    check_name("uid", uid, MAX_UID_BYTES, |c| c.is_ascii_graphic(), "")
}

/// A region name: 1..=[`MAX_REGION_BYTES`] bytes of lowercase letters, digits, '-' and '_'.
pub fn check_region(region: &str) -> Result<(), NameError> {
    check_name(
        "region",
        region,
        MAX_REGION_BYTES,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_',
        " (lowercase letters, digits, '-' and '_', as in the deployment config)",
    )
}

fn check_name(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    extra: &'static str,
) -> Result<(), NameError> {
    if value.is_empty() || value.len() > max {
        return Err(NameError::Length {
            what,
            value: shown(value),
            len: value.len(),
            max,
        });
    }
    if let Some(ch) = value.chars().find(|c| !allowed(*c)) {
        return Err(NameError::Character {
            what,
            value: shown(value),
            ch,
            extra,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_are_normalized_to_lowercase() {
        assert_eq!(WxId::parse("SzDy01").unwrap().as_str(), "szdy01");
        assert_eq!(WxId::parse("a_b-c1").unwrap().as_str(), "a_b-c1");
        assert_eq!(
            WxId::parse("abcdefghijklmnopqrst").unwrap().as_str().len(),
            20
        );
        assert_eq!(
            WxId::parse("SZDY01").unwrap(),
            WxId::parse("szdy01").unwrap()
        );
    }

    #[test]
    fn each_rule_has_its_own_error() {
        assert!(matches!(
            WxId::parse(""),
            Err(WxidError::TooShort { chars: 0, .. })
        ));
        assert!(matches!(
            WxId::parse("abcde"),
            Err(WxidError::TooShort { chars: 5, .. })
        ));
        assert!(matches!(
            WxId::parse("abcdefghijklmnopqrstu"),
            Err(WxidError::TooLong { chars: 21, .. })
        ));
        assert!(matches!(
            WxId::parse("1abcdef"),
            Err(WxidError::MustStartWithLetter { first: '1', .. })
        ));
        assert!(matches!(
            WxId::parse("_abcdef"),
            Err(WxidError::MustStartWithLetter { first: '_', .. })
        ));
        assert!(matches!(
            WxId::parse("abc def"),
            Err(WxidError::BadCharacter {
                ch: ' ',
                position: 4,
                ..
            })
        ));
        assert!(matches!(
            WxId::parse("abc.def"),
            Err(WxidError::BadCharacter { ch: '.', .. })
        ));
        // Non-ASCII letters are not allowed, and lengths count characters, not bytes.
        assert!(matches!(
            WxId::parse("abcdé1"),
            Err(WxidError::BadCharacter {
                ch: 'é',
                position: 5,
                ..
            })
        ));
        assert!(matches!(
            WxId::parse("微信号微信号"),
            Err(WxidError::MustStartWithLetter { .. })
        ));
        assert!(matches!(
            WxId::parse("Service"),
            Err(WxidError::ReservedWord {
                word: "service",
                ..
            })
        ));
        assert!(matches!(
            WxId::parse("Admin_Zhang"),
            Err(WxidError::ReservedPrefix { word: "admin", .. })
        ));
        assert!(matches!(
            WxId::parse("wechat-team"),
            Err(WxidError::ReservedPrefix { word: "wechat", .. })
        ));
        assert!(matches!(
            WxId::parse("ROOT01"),
            Err(WxidError::ReservedPrefix { word: "root", .. })
        ));
        // A reserved word inside an ID is fine.
        assert!(WxId::parse("myadmin1").is_ok());
    }

    #[test]
    fn errors_say_what_to_do_and_cut_long_input() {
        let e = WxId::parse(&"x".repeat(10_000)).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
        assert!(e.contains("at most 20"), "{e}");
        let e = WxId::parse("a.bcdef").unwrap_err().to_string();
        assert!(e.contains("only letters"), "{e}");
    }

    #[test]
    fn uids_and_regions() {
        assert!(check_uid("sh-42").is_ok());
        assert!(matches!(check_uid(""), Err(NameError::Length { .. })));
        assert!(matches!(
            check_uid(&"u".repeat(129)),
            Err(NameError::Length { .. })
        ));
        assert!(matches!(
            check_uid("a b"),
            Err(NameError::Character { ch: ' ', .. })
        ));
        assert!(check_region("sh").is_ok());
        assert!(matches!(
            check_region("Sh"),
            Err(NameError::Character { ch: 'S', .. })
        ));
    }

    /// The rules, restated independently of `parse`.
    fn rules_hold(s: &str) -> bool {
        let lower = s.to_ascii_lowercase();
        (MIN_WXID_CHARS..=MAX_WXID_CHARS).contains(&s.chars().count())
            && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !RESERVED_WORDS.contains(&lower.as_str())
            && !RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
    }

    fn check_parse(s: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let parsed = WxId::parse(s);
        proptest::prop_assert_eq!(parsed.is_ok(), rules_hold(s), "{:?}: {:?}", s, parsed);
        if let Ok(id) = parsed {
            proptest::prop_assert_eq!(id.as_str(), s.to_ascii_lowercase());
            proptest::prop_assert_eq!(WxId::parse(&s.to_ascii_uppercase()).unwrap(), id);
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn parse_follows_the_rules_on_any_text(s in "\\PC{0,24}") {
            check_parse(&s)?;
        }

        #[test]
        fn parse_follows_the_rules_on_id_like_text(s in "(admin|root|wechat|service)?[a-zA-Z0-9_.-]{0,22}") {
            check_parse(&s)?;
        }
    }
}
