//! How commands print: JSON documents with the schema version
//! (docs/JSON.md), and text tables whose columns line up whatever the
//! values' widths (the width of each column is its widest cell).

/// Version of the `--json` documents; bump it when a field changes meaning
/// or goes away (new fields do not bump it).
pub const SCHEMA_VERSION: u32 = 1;

/// Prints a result document: the daemon's answer with `schema_version`
/// and `ok` added.
pub fn print_json(mut result: serde_json::Value) {
    if let Some(map) = result.as_object_mut() {
        map.insert("schema_version".into(), SCHEMA_VERSION.into());
        map.insert("ok".into(), true.into());
    }
    println!("{result}");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A text table: a header row, then rows, columns two spaces apart.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    /// The table, each line starting with `indent`; no trailing spaces.
    pub fn render(&self, indent: &str) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.columns[i].0.len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let header: Vec<String> = self.columns.iter().map(|c| c.0.to_owned()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A rate or count with an SI suffix: 999, 1.2k, 3.4M, 5.6G.
pub fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.1}G", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// A duration as the largest units that matter: 45s, 3m12s, 2h05m, 3d04h.
pub fn ago(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
pub use tests::assert_aligned;

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each header starts, and checks every row's cell of a column
    /// ends (right-aligned) or starts (left-aligned) at the same place.
    pub fn assert_aligned(text: &str, columns: &[(&str, Align)]) {
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[0];
        let mut starts = Vec::new();
        for (name, _) in columns {
            let at = header
                .find(name)
                .unwrap_or_else(|| panic!("no {name} in {header:?}"));
            starts.push(at);
        }
        let ends: Vec<usize> = columns
            .iter()
            .zip(&starts)
            .map(|((name, _), s)| s + name.len())
            .collect();
        for line in &lines[1..] {
            let chars: Vec<char> = line.chars().collect();
            for (i, (name, align)) in columns.iter().enumerate() {
                match align {
                    Align::Left => {
                        assert!(
                            chars.get(starts[i]).is_some_and(|c| *c != ' ')
                                && (starts[i] == 0 || chars[starts[i] - 1] == ' '),
                            "column {name} does not start at {}: {line:?}\n{text}",
                            starts[i]
                        );
                    }
                    Align::Right => {
                        // The column's widest cell may be wider than the
                        // header: the header ends where every cell ends.
                        assert!(
                            chars.get(ends[i] - 1).is_some_and(|c| *c != ' ')
                                && chars.get(ends[i]).is_none_or(|c| *c == ' '),
                            "column {name} does not end at {}: {line:?}\n{text}",
                            ends[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn columns_line_up_whatever_the_widths() {
        let cols = [
            ("NAME", Align::Left),
            ("COUNT", Align::Right),
            ("NOTE", Align::Left),
        ];
        let mut t = Table::new(&cols);
        t.row(vec!["a".into(), "1".into(), "x".into()]);
        t.row(vec![
            "a-much-longer-name".into(),
            "1234567890".into(),
            "y y".into(),
        ]);
        t.row(vec!["b".into(), "22".into(), "z".into()]);
        let text = t.render("  ");
        assert_aligned(&text, &cols);
        assert!(text
            .lines()
            .all(|l| l.starts_with("  ") && !l.ends_with(' ')));
    }

    #[test]
    fn numbers_and_durations_are_short() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(5.6e9), "5.6G");
        assert_eq!(ago(5.2), "5s");
        assert_eq!(ago(192.0), "3m12s");
        assert_eq!(ago(7500.0), "2h05m");
        assert_eq!(ago(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
    }
}
