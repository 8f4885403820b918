//! The review as a PDF, for the governors' minutes: A4 pages of text and
//! tables in the standard Helvetica fonts (no font embedded, so no font
//! file in the binary), written with `pdf-writer`. Text is WinAnsi: a
//! character outside it is printed as `?` (site names are the only free
//! text; the rest is ours). The document carries its title and language.
//! It is not a tagged PDF; the console page is the accessible form.

use pdf_writer::{Content, Name, Pdf, Rect, Ref, Str, TextStr};

use super::{AnnualReview, Count, duration_words};

const WIDTH: f32 = 595.0;
const HEIGHT: f32 = 842.0;
const MARGIN: f32 = 50.0;

/// One line of the document.
enum Line {
    Title(String),
    Heading(String),
    Text(String),
    /// Cells at the columns' x offsets; the first row of a table is bold.
    Row(Vec<String>, bool),
    Gap,
}

impl Line {
    fn height(&self) -> f32 {
        match self {
            Line::Title(_) => 26.0,
            Line::Heading(_) => 22.0,
            Line::Text(_) | Line::Row(..) => 14.0,
            Line::Gap => 8.0,
        }
    }
}

/// The review as PDF bytes.
pub fn render(review: &AnnualReview, period_words: &str) -> Vec<u8> {
    let lines = lines(review, period_words);
    write(
        &lines,
        &format!("Monitoring review: {}", review.sites.join(", ")),
    )
}

fn table(lines: &mut Vec<Line>, header: &[&str], rows: Vec<Vec<String>>) {
    lines.push(Line::Row(
        header.iter().map(|s| s.to_string()).collect(),
        true,
    ));
    if rows.is_empty() {
        lines.push(Line::Text("None.".into()));
    }
    lines.extend(rows.into_iter().map(|r| Line::Row(r, false)));
    lines.push(Line::Gap);
}

fn count_rows(counts: &[Count], prefix: &str) -> Vec<Vec<String>> {
    counts
        .iter()
        .map(|c| {
            vec![
                format!("{prefix}{}", c.key.replace('_', " ")),
                c.count.to_string(),
            ]
        })
        .collect()
}

fn lines(r: &AnnualReview, period_words: &str) -> Vec<Line> {
    let mut l = vec![
        Line::Title("Monitoring effectiveness review".into()),
        Line::Text(format!("Sites: {}", r.sites.join(", "))),
        Line::Text(format!("Period: {period_words} ({})", r.timezone)),
        Line::Text(format!(
            "Generated: {}",
            r.generated_at
                .to_zoned(jiff::tz::TimeZone::get(&r.timezone).unwrap_or(jiff::tz::TimeZone::UTC))
                .strftime("%-d %b %Y %H:%M")
        )),
        Line::Gap,
        Line::Heading("Device coverage".into()),
    ];
    let c = &r.coverage;
    table(
        &mut l,
        &["Figure", "Devices"],
        vec![
            vec!["Enrolled".into(), c.enrolled.to_string()],
            vec![
                format!("Reporting in the last {} days", c.reporting_days),
                c.reporting.to_string(),
            ],
            vec!["Agents silent".into(), c.silent.to_string()],
            vec![
                "Session helpers running".into(),
                c.helpers_running.to_string(),
            ],
            vec![
                "Session helpers missing".into(),
                c.helpers_missing.to_string(),
            ],
            vec![
                "Tamper flags in the period".into(),
                c.tamper_flags.to_string(),
            ],
        ],
    );
    table(
        &mut l,
        &["Agent signals in the period", "Signals"],
        count_rows(&c.agent_signals, ""),
    );
    l.push(Line::Heading("Compliance with the rules".into()));
    table(
        &mut l,
        &["Device-activity verdict now", "Devices"],
        count_rows(&r.compliance.activity_now, ""),
    );
    table(
        &mut l,
        &["2FA verdict now", "Pairs"],
        count_rows(&r.compliance.mfa_now, ""),
    );
    table(
        &mut l,
        &[
            "Month",
            "Inactive opened",
            "Inactive at end",
            "2FA stale opened",
            "2FA stale at end",
        ],
        r.compliance
            .months
            .iter()
            .map(|m| {
                vec![
                    m.month.clone(),
                    m.inactive_opened.to_string(),
                    m.inactive_at_end.to_string(),
                    m.mfa_stale_opened.to_string(),
                    m.mfa_stale_at_end.to_string(),
                ]
            })
            .collect(),
    );
    l.push(Line::Heading(format!(
        "Captures ({}) and incidents ({} opened, {} open at the end)",
        r.captures.total, r.incidents.opened, r.incidents.open_at_end
    )));
    table(
        &mut l,
        &["Captures by grade", "Captures"],
        count_rows(&r.captures.by_grade, "Grade "),
    );
    table(
        &mut l,
        &["Captures by category", "Captures"],
        count_rows(&r.captures.by_category, ""),
    );
    table(
        &mut l,
        &["Incidents by severity", "Incidents"],
        count_rows(&r.incidents.by_severity, "Severity "),
    );
    table(
        &mut l,
        &["Incidents by category", "Incidents"],
        count_rows(&r.incidents.by_category, ""),
    );
    l.push(Line::Text(format!(
        "Accounts with a capture: {} pupils, {} staff (counts only).",
        r.accounts_affected.pupils, r.accounts_affected.staff
    )));
    l.push(Line::Gap);
    l.push(Line::Heading("Review".into()));
    let time = |ms: Option<i64>| ms.map_or("no review yet".into(), duration_words);
    l.push(Line::Text(format!(
        "Reviewed {} of {} captures. Capture to first review: median {}, 90th percentile {}.",
        r.review.reviewed,
        r.review.reviewed + r.review.not_reviewed,
        time(r.review.median_ms),
        time(r.review.p90_ms)
    )));
    l.push(Line::Gap);
    table(
        &mut l,
        &["Review state", "Captures"],
        count_rows(&r.review.outcomes, ""),
    );
    l.push(Line::Heading("Who has access".into()));
    table(
        &mut l,
        &["Role", "Accounts"],
        count_rows(&r.access.by_role, ""),
    );
    table(
        &mut l,
        &["Account", "Role", "Sees captures", "Sees devices"],
        r.access
            .staff
            .iter()
            .map(|s| {
                let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
                vec![
                    s.username.clone(),
                    s.role.clone(),
                    yes(s.sees_captures),
                    yes(s.sees_devices),
                ]
            })
            .collect(),
    );
    l.push(Line::Heading("Freedom-of-information answers".into()));
    let foi = &r.freedom_of_information;
    l.push(Line::Text(format!(
        "Staff accounts that can see monitoring data: {} ({} of them see pupil-level captures).",
        foi.staff_accounts_with_access, foi.staff_accounts_seeing_captures
    )));
    l.push(Line::Gap);
    table(
        &mut l,
        &["Alerts by severity", "Alerts"],
        count_rows(&foi.alerts_by_severity, "Severity "),
    );
    table(
        &mut l,
        &["Alerts by category", "Alerts"],
        count_rows(&foi.alerts_by_category, ""),
    );
    l
}

/// WinAnsi bytes for `text` (Latin-1 covers it but for a few
/// punctuation marks, which become their ASCII look-alikes).
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            '\u{2013}' | '\u{2014}' => b'-',
            '\u{2018}' | '\u{2019}' => b'\'',
            '\u{201c}' | '\u{201d}' => b'"',
            ' '..='~' | '\u{a0}'..='\u{ff}' => c as u32 as u8,
            _ => b'?',
        })
        .collect()
}

fn columns(cells: usize) -> Vec<f32> {
    match cells {
        0 | 1 => vec![MARGIN],
        2 => vec![MARGIN, MARGIN + 330.0],
        n => {
            let first = 140.0;
            let rest = (WIDTH - 2.0 * MARGIN - first) / (n - 1) as f32;
            (0..n)
                .map(|i| match i {
                    0 => MARGIN,
                    i => MARGIN + first + rest * (i - 1) as f32,
                })
                .collect()
        }
    }
}

fn write(lines: &[Line], title: &str) -> Vec<u8> {
    let mut pages: Vec<Content> = Vec::new();
    let mut content = Content::new();
    let mut y = HEIGHT - MARGIN;
    for line in lines {
        if y - line.height() < MARGIN {
            pages.push(std::mem::replace(&mut content, Content::new()));
            y = HEIGHT - MARGIN;
        }
        y -= line.height();
        let mut text = |font: &[u8], size: f32, x: f32, words: &str| {
            content
                .begin_text()
                .set_font(Name(font), size)
                .next_line(x, y)
                .show(Str(&win_ansi(words)))
                .end_text();
        };
        match line {
            Line::Title(t) => text(b"F2", 18.0, MARGIN, t),
            Line::Heading(t) => text(b"F2", 13.0, MARGIN, t),
            Line::Text(t) => text(b"F1", 10.0, MARGIN, t),
            Line::Row(cells, bold) => {
                let font: &[u8] = if *bold { b"F2" } else { b"F1" };
                for (cell, x) in cells.iter().zip(columns(cells.len())) {
                    text(font, 10.0, x, cell);
                }
            }
            Line::Gap => {}
        }
    }
    pages.push(content);

    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let first_page = 6;
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(first_page + 2 * i as i32))
        .collect();
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree).lang(TextStr("en-GB"));
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.document_info(info)
        .title(TextStr(title))
        .creator(TextStr("Hall Monitor"));
    for (page, content) in page_ids.iter().zip(pages) {
        let stream = Ref::new(page.get() + 1);
        let mut writer = pdf.page(*page);
        writer
            .parent(tree)
            .media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT))
            .contents(stream);
        writer
            .resources()
            .fonts()
            .pair(Name(b"F1"), regular)
            .pair(Name(b"F2"), bold);
        drop(writer);
        pdf.stream(stream, &content.finish());
    }
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_outside_win_ansi_is_replaced() {
        assert_eq!(win_ansi("Caf\u{e9} \u{2013} ok"), b"Caf\xe9 - ok");
        assert_eq!(win_ansi("\u{4e2d}"), b"?");
    }

    #[test]
    fn a_long_document_breaks_into_pages() {
        let lines: Vec<Line> = (0..200).map(|i| Line::Text(format!("line {i}"))).collect();
        let bytes = write(&lines, "t");
        assert!(bytes.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("/Count 4"),
            "{} pages",
            text.matches("/Type /Page\n").count()
        );
        assert!(text.trim_end().ends_with("%%EOF"));
    }
}
