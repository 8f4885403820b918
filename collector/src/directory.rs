//! A site's directory of accounts (who is staff, who is a pupil, which
//! groups they are in: year groups, staff teams, SEN), imported
//! from a plain MIS or identity-provider CSV export, and the sign-in log
//! imports that share its CSV handling.
//!
//! A file is parsed completely before anything is stored: the first
//! problem rejects the whole file with its line and column, so nothing is
//! ever half-imported.

use std::collections::BTreeSet;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Staff,
    Pupil,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Staff => "staff",
            Role::Pupil => "pupil",
        }
    }

    /// The words MIS and identity-provider exports use.
    pub fn parse(text: &str) -> Option<Role> {
        match text.trim().to_ascii_lowercase().as_str() {
            "staff" | "teacher" | "teaching staff" | "support staff" | "employee" | "faculty" => {
                Some(Role::Staff)
            }
            "pupil" | "student" | "learner" => Some(Role::Pupil),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectoryAccount {
    /// The login name on school devices, lower-cased.
    pub username: String,
    pub role: Role,
    /// Lower-cased; also matches identity-provider sign-ins.
    pub email: String,
    pub display_name: String,
    /// Normalised group names (`hallmonitor_policy::group_name`), sorted,
    /// each once; policy rules and categories can be scoped to them.
    pub groups: Vec<String>,
}

/// Most groups one account may be in.
pub const MAX_GROUPS_PER_ACCOUNT: usize = 50;

/// The groups cell: names separated by `;` ("Year 7; SEN"), normalised;
/// empty pieces (a trailing `;`) are skipped.
pub fn parse_groups(cell: &str) -> Result<Vec<String>, String> {
    let mut groups = Vec::new();
    for piece in cell.split(';') {
        if piece.trim().is_empty() {
            continue;
        }
        groups.push(hallmonitor_policy::group_name(piece)?);
    }
    groups.sort();
    groups.dedup();
    if groups.len() > MAX_GROUPS_PER_ACCOUNT {
        return Err(format!(
            "more than {MAX_GROUPS_PER_ACCOUNT} groups for one account"
        ));
    }
    Ok(groups)
}

/// A problem in an imported file, located for the person fixing it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", location(*line, column.as_ref()))]
pub struct ImportError {
    pub file: String,
    pub line: u64,
    /// 1-based column number and header name.
    pub column: Option<(usize, String)>,
    pub message: String,
}

fn location(line: u64, column: Option<&(usize, String)>) -> String {
    match (line, column) {
        (0, _) => String::new(),
        (line, None) => format!("line {line}: "),
        (line, Some((n, name))) => format!("line {line}, column {n} ({name}): "),
    }
}

/// A CSV file with named columns, read whole.
pub struct CsvTable {
    pub file: String,
    pub headers: Vec<String>,
    /// (line number, fields)
    pub rows: Vec<(u64, Vec<String>)>,
}

/// Header names compared loosely: case, spaces, underscores and
/// parentheses do not matter ("Date (UTC)" = "date_utc").
pub fn normalise_header(h: &str) -> String {
    h.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

impl CsvTable {
    pub fn read(bytes: &[u8], file: &str) -> Result<CsvTable, ImportError> {
        // A UTF-8 byte order mark, as Excel writes, is not part of the
        // first header.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
        let error = |line: u64, message: String| ImportError {
            file: file.to_owned(),
            line,
            column: None,
            message,
        };
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| error(1, format!("unreadable header: {e}")))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        if headers.iter().all(String::is_empty) {
            return Err(error(1, "the file is empty (no header line)".into()));
        }
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                error(line, csv_problem(&e))
            })?;
            let line = record.position().map_or(0, |p| p.line());
            if record.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            rows.push((line, record.iter().map(|f| f.trim().to_owned()).collect()));
        }
        Ok(CsvTable {
            file: file.to_owned(),
            headers,
            rows,
        })
    }

    /// The index of the first column named any of `names` (normalised).
    pub fn column(&self, names: &[&str]) -> Option<usize> {
        let wanted: Vec<String> = names.iter().map(|n| normalise_header(n)).collect();
        self.headers
            .iter()
            .position(|h| wanted.contains(&normalise_header(h)))
    }

    pub fn require(&self, names: &[&str]) -> Result<usize, ImportError> {
        self.column(names).ok_or_else(|| ImportError {
            file: self.file.clone(),
            line: 1,
            column: None,
            message: format!(
                "no '{}' column (the header has: {})",
                names[0],
                self.headers.join(", ")
            ),
        })
    }

    pub fn error(&self, line: u64, column: usize, message: impl Into<String>) -> ImportError {
        ImportError {
            file: self.file.clone(),
            line,
            column: Some((column + 1, self.headers[column].clone())),
            message: message.into(),
        }
    }
}

fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8 text".into(),
        _ => e.to_string(),
    }
}

/// Parses a directory export: columns `username` and `role` (required),
/// `email`, `display name` and `groups` (optional), in any order.
pub fn parse_directory(bytes: &[u8], file: &str) -> Result<Vec<DirectoryAccount>, ImportError> {
    let table = CsvTable::read(bytes, file)?;
    let username = table.require(&["username", "user name", "login", "account"])?;
    let role = table.require(&["role", "type", "user type"])?;
    let email = table.column(&["email", "email address", "mail", "upn"]);
    let name = table.column(&["display name", "name", "full name"]);
    let groups = table.column(&["groups", "group", "user groups"]);
    let mut seen = BTreeSet::new();
    let mut accounts = Vec::with_capacity(table.rows.len());
    for (line, fields) in &table.rows {
        let user = fields[username].to_lowercase();
        if user.is_empty() {
            return Err(table.error(*line, username, "empty username"));
        }
        if user.chars().any(char::is_whitespace) {
            return Err(table.error(*line, username, format!("'{user}' contains spaces")));
        }
        if !seen.insert(user.clone()) {
            return Err(table.error(*line, username, format!("'{user}' appears twice")));
        }
        let parsed_role = Role::parse(&fields[role]).ok_or_else(|| {
            table.error(
                *line,
                role,
                format!("'{}' is not a role (staff or pupil)", fields[role]),
            )
        })?;
        let email = email.map(|c| fields[c].to_lowercase()).unwrap_or_default();
        if !email.is_empty() && !email.contains('@') {
            return Err(table.error(
                *line,
                table
                    .column(&["email", "email address", "mail", "upn"])
                    .unwrap_or(0),
                format!("'{email}' is not an email address"),
            ));
        }
        let account_groups = match groups {
            None => Vec::new(),
            Some(c) => {
                parse_groups(&fields[c]).map_err(|message| table.error(*line, c, message))?
            }
        };
        accounts.push(DirectoryAccount {
            username: user,
            role: parsed_role,
            email,
            display_name: name.map(|c| fields[c].clone()).unwrap_or_default(),
            groups: account_groups,
        });
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_export_parses_in_any_column_order() {
        let csv = "\u{feff}Email,Display Name,Role,Username\r\n\
                   J.Smith@cabot.sch.uk,Jane Smith,Teacher,J.Smith\r\n\
                   \r\n\
                   ,Pupil One,Student,pupil1\r\n";
        let accounts = parse_directory(csv.as_bytes(), "mis.csv").unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].username, "j.smith");
        assert_eq!(accounts[0].role, Role::Staff);
        assert_eq!(accounts[0].email, "j.smith@cabot.sch.uk");
        assert_eq!(accounts[1].role, Role::Pupil);
        assert!(accounts[1].groups.is_empty(), "no groups column");
    }

    #[test]
    fn groups_are_normalised() {
        let csv = "username,role,Groups\n\
                   p1,pupil,Year 7; SEN\n\
                   p2,pupil,\n\
                   t1,staff,staff;Staff ; year-7;\n";
        let accounts = parse_directory(csv.as_bytes(), "mis.csv").unwrap();
        let groups: Vec<&[String]> = accounts.iter().map(|a| a.groups.as_slice()).collect();
        assert_eq!(groups[0], ["sen", "year-7"]);
        assert!(groups[1].is_empty(), "empty cell: no groups");
        assert_eq!(groups[2], ["staff", "year-7"], "each once, sorted");
    }

    #[test]
    fn problems_name_line_and_column() {
        let long_group = format!("username,role,groups\na,pupil,{}\n", "g".repeat(41));
        let many_groups = format!(
            "username,role,groups\na,pupil,{}\n",
            (0..51)
                .map(|n| format!("g{n}"))
                .collect::<Vec<_>>()
                .join(";")
        );
        let cases = [
            (
                "no role column",
                "username,email\na,a@x\n",
                "mis.csv: line 1: no 'role' column",
            ),
            (
                "bad role",
                "username,role\na,staff\nb,janitor\n",
                "line 3, column 2 (role): 'janitor' is not a role",
            ),
            (
                "duplicate",
                "username,role\na,staff\nA,pupil\n",
                "line 3, column 1 (username): 'a' appears twice",
            ),
            (
                "short row",
                "username,role\na,staff\nb\n",
                "line 3: 1 fields where the header has 2",
            ),
            (
                "bad email",
                "username,role,email\na,staff,nope\n",
                "line 2, column 3 (email): 'nope' is not an email",
            ),
            ("empty file", "", "line 1: the file is empty"),
            (
                "bad group",
                "username,role,groups\na,pupil,year 7\nb,pupil,year 7;SEN/2\n",
                "line 3, column 3 (groups): group 'SEN/2': '/' is not allowed",
            ),
            (
                "long group",
                long_group.as_str(),
                "line 2, column 3 (groups): group 'ggg",
            ),
            (
                "too many groups",
                many_groups.as_str(),
                "line 2, column 3 (groups): more than 50 groups",
            ),
        ];
        for (name, csv, want) in &cases {
            let err = parse_directory(csv.as_bytes(), "mis.csv")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
    }
}
