//! A site's acceptable-use policy (AUP): the words a user accepts or
//! declines at graphical log-on, and what a decline does.
//!
//! The document is TOML. The top level is what everyone is shown unless an
//! audience section names one of their groups; audiences are tried in
//! order and the first whose `groups` meets the user's groups wins:
//!
//! ```toml
//! title = "Using the school's computers"
//! text = """What everyone agrees to…"""
//! decline = "log_out"          # or "record" (the default)
//!
//! [[audiences]]
//! groups = ["pupils"]          # built in: "staff" and "pupils"
//! text = """What pupils agree to…"""
//! decline = "log_out"          # optional: the top level's otherwise
//! ```
//!
//! The collector numbers versions; the document carries none. The
//! collector refuses a document that does not parse, naming the file,
//! line and field, with exactly this parser, and an agent keeps the last
//! good version when one reaches it anyway. No I/O.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::PolicyError;

/// The longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// The longest text of one audience, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// At most this many audience sections, and groups in one.
pub const MAX_AUDIENCES: usize = 64;
pub const MAX_GROUPS: usize = 64;

/// The built-in group of accounts the agent counts as staff.
pub const STAFF_GROUP: &str = "staff";
/// The built-in group of every other account.
pub const PUPILS_GROUP: &str = "pupils";

/// What a decline does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decline {
    /// The answer is recorded; the user stays logged on.
    Record,
    /// The answer is recorded and the user's session is ended.
    LogOut,
}

impl Decline {
    pub fn as_str(self) -> &'static str {
        match self {
            Decline::Record => "record",
            Decline::LogOut => "log_out",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AupFile {
    title: Option<toml::Spanned<String>>,
    text: Option<toml::Spanned<String>>,
    decline: Option<Decline>,
    #[serde(default)]
    audiences: Vec<toml::Spanned<AudienceSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudienceSpec {
    groups: toml::Spanned<Vec<String>>,
    title: Option<toml::Spanned<String>>,
    text: toml::Spanned<String>,
    decline: Option<Decline>,
}

/// A parsed and checked AUP document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aup {
    everyone: Option<Prompt>,
    audiences: Vec<Audience>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Audience {
    groups: BTreeSet<String>,
    prompt: Prompt,
}

/// What one user is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub title: String,
    pub text: String,
    pub decline: Decline,
}

/// The title when a document gives none.
pub const DEFAULT_TITLE: &str = "Acceptable use policy";

impl Aup {
    /// Parses and checks a document; errors name `file`, the line and the
    /// field.
    pub fn parse(text: &str, file: &str) -> Result<Aup, PolicyError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let error = |offset: Option<usize>, message: String| PolicyError {
            file: file.to_owned(),
            line: offset.map(line_of),
            message,
        };
        let spec: AupFile = toml::from_str(text)
            .map_err(|e| error(e.span().map(|s| s.start), e.message().into()))?;
        let title = match &spec.title {
            Some(title) => {
                check_title(title.get_ref()).map_err(|m| error(Some(title.span().start), m))?;
                title.get_ref().trim().to_owned()
            }
            None => DEFAULT_TITLE.to_owned(),
        };
        let decline = spec.decline.unwrap_or(Decline::Record);
        let everyone = match &spec.text {
            Some(body) => {
                check_text(body.get_ref()).map_err(|m| error(Some(body.span().start), m))?;
                Some(Prompt {
                    title: title.clone(),
                    text: body.get_ref().clone(),
                    decline,
                })
            }
            None => None,
        };
        if spec.audiences.len() > MAX_AUDIENCES {
            let at = spec.audiences[MAX_AUDIENCES].span().start;
            return Err(error(
                Some(at),
                format!("audiences: at most {MAX_AUDIENCES} sections"),
            ));
        }
        let mut audiences = Vec::new();
        for section in &spec.audiences {
            let spec = section.get_ref();
            let groups = spec.groups.get_ref();
            let at = Some(spec.groups.span().start);
            if groups.is_empty() {
                return Err(error(
                    at,
                    "audiences.groups: name at least one group".into(),
                ));
            }
            if groups.len() > MAX_GROUPS {
                return Err(error(
                    at,
                    format!("audiences.groups: at most {MAX_GROUPS} groups"),
                ));
            }
            // Named as the directory names them ("Year 7" is `year-7`), so
            // an audience matches the groups users are in.
            let groups = groups
                .iter()
                .map(|g| {
                    crate::group_name(g)
                        .map_err(|m| error(at, format!("audiences.groups: {g:?}: {m}")))
                })
                .collect::<Result<BTreeSet<String>, _>>()?;
            let title = match &spec.title {
                Some(own) => {
                    check_title(own.get_ref()).map_err(|m| error(Some(own.span().start), m))?;
                    own.get_ref().trim().to_owned()
                }
                None => title.clone(),
            };
            check_text(spec.text.get_ref())
                .map_err(|m| error(Some(spec.text.span().start), format!("audiences.{m}")))?;
            audiences.push(Audience {
                groups,
                prompt: Prompt {
                    title,
                    text: spec.text.get_ref().clone(),
                    decline: spec.decline.unwrap_or(decline),
                },
            });
        }
        if everyone.is_none() && audiences.is_empty() {
            return Err(error(
                None,
                "text: missing (give the text everyone is shown, or at least one [[audiences]] section)"
                    .into(),
            ));
        }
        Ok(Aup {
            everyone,
            audiences,
        })
    }

    /// What a user in `groups` is shown: the first audience naming one of
    /// their groups, else the top level's text; `None` when neither
    /// applies (the site asks nothing of this user).
    pub fn select(&self, groups: &BTreeSet<String>) -> Option<&Prompt> {
        self.audiences
            .iter()
            .find(|audience| !audience.groups.is_disjoint(groups))
            .map(|audience| &audience.prompt)
            .or(self.everyone.as_ref())
    }
}

/// The built-in groups of a user the agent knows only as staff or not.
pub fn builtin_groups(staff: bool) -> BTreeSet<String> {
    let group = if staff { STAFF_GROUP } else { PUPILS_GROUP };
    BTreeSet::from([group.to_owned()])
}

fn check_title(title: &str) -> Result<(), String> {
    if title.trim().is_empty() {
        return Err("title: empty".into());
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(format!("title: longer than {MAX_TITLE_CHARS} characters"));
    }
    if title.chars().any(char::is_control) {
        return Err("title: control characters".into());
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("text: empty".into());
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!("text: longer than {} KiB", MAX_TEXT_BYTES / 1024));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err("text: control characters other than new lines and tabs".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|g| g.to_string()).collect()
    }

    const SITE: &str = r#"
title = "Using the school's computers"
text = "Everyone: be kind."
decline = "record"

[[audiences]]
groups = ["pupils"]
text = "Pupils: no games."
decline = "log_out"

[[audiences]]
groups = ["year-7", "sen"]
title = "Year 7"
text = "Year 7: ask a teacher."
"#;

    #[test]
    fn the_first_audience_naming_a_group_of_the_user_wins() {
        let aup = Aup::parse(SITE, "aup.toml").unwrap();
        type Shown<'a> = Option<(&'a str, &'a str, Decline)>;
        let cases: &[(&str, &[&str], Shown)] = &[
            (
                "a pupil",
                &["pupils"],
                Some((
                    "Using the school's computers",
                    "Pupils: no games.",
                    Decline::LogOut,
                )),
            ),
            (
                "staff fall back to everyone's",
                &["staff"],
                Some((
                    "Using the school's computers",
                    "Everyone: be kind.",
                    Decline::Record,
                )),
            ),
            (
                "a directory group, own title, top decline",
                &["sen"],
                Some(("Year 7", "Year 7: ask a teacher.", Decline::Record)),
            ),
            (
                "order decides between two matches",
                &["year-7", "pupils"],
                Some((
                    "Using the school's computers",
                    "Pupils: no games.",
                    Decline::LogOut,
                )),
            ),
            (
                "no groups at all",
                &[],
                Some((
                    "Using the school's computers",
                    "Everyone: be kind.",
                    Decline::Record,
                )),
            ),
        ];
        for (name, user, expected) in cases {
            let got = aup
                .select(&groups(user))
                .map(|p| (p.title.as_str(), p.text.as_str(), p.decline));
            assert_eq!(got, *expected, "{name}");
        }
    }

    #[test]
    fn without_a_top_level_text_only_the_audiences_are_asked() {
        let aup = Aup::parse(
            "[[audiences]]\ngroups = [\"pupils\"]\ntext = \"p\"\n",
            "aup.toml",
        )
        .unwrap();
        assert!(aup.select(&builtin_groups(true)).is_none());
        let prompt = aup.select(&builtin_groups(false)).unwrap();
        assert_eq!(prompt.title, DEFAULT_TITLE);
        assert_eq!(prompt.decline, Decline::Record);
    }

    #[test]
    fn refusals_name_the_file_line_and_field() {
        let long_title = format!("title = \"{}\"\ntext = \"t\"\n", "x".repeat(201));
        let cases: &[(&str, &str, Option<usize>, &str)] = &[
            ("not toml", "title = \n", Some(1), "quoted"),
            (
                "unknown field",
                "text = \"t\"\ncolour = \"red\"\n",
                Some(2),
                "colour",
            ),
            (
                "bad decline",
                "text = \"t\"\ndecline = \"explode\"\n",
                Some(2),
                "explode",
            ),
            (
                "empty text",
                "title = \"T\"\ntext = \"  \"\n",
                Some(2),
                "text: empty",
            ),
            ("nothing to show", "title = \"T\"\n", None, "text: missing"),
            (
                "audience without groups",
                "text = \"t\"\n\n[[audiences]]\ngroups = []\ntext = \"p\"\n",
                Some(4),
                "audiences.groups",
            ),
            (
                "audience without text",
                "text = \"t\"\n[[audiences]]\ngroups = [\"pupils\"]\n",
                Some(2),
                "text",
            ),
            ("title too long", long_title.as_str(), Some(1), "title"),
            (
                "a group name the directory could not have",
                "text = \"t\"\n[[audiences]]\ngroups = [\"year 7!\"]\ntext = \"p\"\n",
                Some(3),
                "year 7!",
            ),
            (
                "control characters",
                "text = \"a\\u0007b\"\n",
                Some(1),
                "control",
            ),
        ];
        for (name, text, line, needle) in cases {
            let error = Aup::parse(text, "aup.toml").expect_err(name);
            assert_eq!(error.file, "aup.toml", "{name}");
            assert_eq!(error.line, *line, "{name}: {error}");
            assert!(error.to_string().contains(needle), "{name}: {error}");
        }
    }

    #[test]
    fn audience_groups_are_named_as_the_directory_names_them() {
        let aup = Aup::parse(
            "[[audiences]]\ngroups = [\"Year 7\", \"SEN\"]\ntext = \"y7\"\n",
            "aup.toml",
        )
        .unwrap();
        assert_eq!(aup.select(&groups(&["year-7"])).unwrap().text, "y7");
        assert_eq!(aup.select(&groups(&["sen"])).unwrap().text, "y7");
        assert!(aup.select(&groups(&["year-8"])).is_none());
    }

    #[test]
    fn builtin_groups_follow_the_agents_user_kind() {
        assert_eq!(builtin_groups(true), groups(&["staff"]));
        assert_eq!(builtin_groups(false), groups(&["pupils"]));
    }
}
