//! The results: a markdown table per workload (Felix, the peer, their
//! ratio, the target), printed and written under `--out` with one
//! PNG chart per workload.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::load::Figure;
use super::PeerFigure;

pub struct Row {
    pub case: String,
    pub felix_label: String,
    pub peer_label: String,
    pub felix: Figure,
    /// `None`: a figure of the machine alone, no peer.
    pub peer: Option<PeerFigure>,
    /// The target for Felix / peer.
    pub target: Option<f64>,
    pub unit: Option<&'static str>,
}

impl Row {
    pub fn new(
        case: String,
        felix_label: String,
        peer_label: String,
        felix: Figure,
        peer: PeerFigure,
        target: Option<f64>,
    ) -> Row {
        Row {
            case,
            felix_label,
            peer_label,
            felix,
            peer: Some(peer),
            target,
            unit: None,
        }
    }

    pub fn alone(case: String, f: Figure) -> Row {
        Row {
            case,
            felix_label: String::new(),
            peer_label: String::new(),
            felix: f,
            peer: None,
            target: None,
            unit: None,
        }
    }

    pub fn unit(mut self, u: &'static str) -> Row {
        self.unit = Some(u);
        self
    }

    fn ratio(&self) -> Option<f64> {
        match &self.peer {
            Some(Ok(p)) if p.rate > 0.0 => Some(self.felix.rate / p.rate),
            _ => None,
        }
    }
}

pub struct Table {
    pub name: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(name: &'static str, title: &'static str, unit: &'static str) -> Table {
        Table {
            name,
            title,
            unit,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, r: Row) {
        self.rows.push(r);
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "## {}\n", self.title);
        let ms = |v: Option<f64>| v.map_or("".into(), |v| format!("{v:.2}"));
        if self.rows.iter().all(|r| r.peer.is_none()) {
            let _ = writeln!(out, "| case | figure | p50 ms | p99 ms |\n|---|---:|---:|---:|");
            for r in &self.rows {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} {} | {} | {} |",
                    r.case,
                    r.felix.rate,
                    r.unit.unwrap_or(self.unit),
                    ms(r.felix.p50_ms),
                    ms(r.felix.p99_ms)
                );
            }
            out.push('\n');
            return;
        }
        let _ = writeln!(
            out,
            "| case | Felix | {u} | p50 ms | p99 ms | server CPU µs/op | peer | {u} | p50 ms | p99 ms | server CPU µs/op | Felix / peer | target |\n|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
            u = self.unit
        );
        let cpu = |v: Option<f64>| v.map_or("".into(), |v| format!("{v:.1}"));
        for r in &self.rows {
            let (peer_rate, p50, p99, peer_cpu) = match &r.peer {
                Some(Ok(p)) => (
                    format!("{:.0}", p.rate),
                    ms(p.p50_ms),
                    ms(p.p99_ms),
                    cpu(p.server_cpu_us_per_op),
                ),
                Some(Err(why)) => (
                    format!("unavailable: {}", why.replace('|', "/")),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
                None => (String::new(), String::new(), String::new(), String::new()),
            };
            let ratio = r.ratio().map_or("".into(), |x| format!("{x:.2}×"));
            let target = match (r.target, r.ratio()) {
                (Some(t), Some(x)) => format!("≥ {t}×: {}", if x >= t { "met" } else { "missed" }),
                (Some(t), None) => format!("≥ {t}×"),
                _ => String::new(),
            };
            let errors = if r.felix.errors > 0 {
                format!(" ({} errors)", r.felix.errors)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0}{errors} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.case,
                r.felix_label,
                r.felix.rate,
                ms(r.felix.p50_ms),
                ms(r.felix.p99_ms),
                cpu(r.felix.server_cpu_us_per_op),
                r.peer_label,
                peer_rate,
                p50,
                p99,
                peer_cpu,
                ratio,
                target
            );
        }
        out.push('\n');
    }
}

pub fn write(
    tables: &[Table],
    out: &Path,
    load_start: &str,
    load_end: &str,
    quick: bool,
) -> anyhow::Result<()> {
    let mut md = String::from("# felix-bench peers\n\n");
    let _ = writeln!(
        md,
        "machine: {} cores; load average at start {load_start}, at end {load_end}{}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick {
            " (a --quick run: these figures are not the published ones)"
        } else {
            ""
        }
    );
    for t in tables {
        t.markdown(&mut md);
    }
    print!("{md}");
    std::fs::create_dir_all(out)?;
    let file = out.join("peers.md");
    std::fs::write(&file, &md)?;
    eprintln!("wrote {}", file.display());
    match font() {
        Some(()) => {
            for t in tables.iter().filter(|t| t.rows.iter().any(|r| r.peer.is_some())) {
                let png = out.join(format!("peers-{}.png", t.name));
                chart(t, &png)?;
                eprintln!("wrote {}", png.display());
            }
        }
        None => eprintln!("no TrueType font found (DejaVu Sans): charts skipped"),
    }
    Ok(())
}

/// Registers a sans-serif font for the charts' text (plotters draws text
/// only with a font it has been given).
fn font() -> Option<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let paths = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        ];
        let Some(bytes) = paths.iter().find_map(|p| std::fs::read(p).ok()) else {
            return false;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    ok.then_some(())
}

/// Felix and the peer side by side per case (log scale: the figures span
/// orders of magnitude).
fn chart(t: &Table, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<&Row> = t.rows.iter().filter(|r| r.peer.is_some()).collect();
    let root = BitMapBackend::new(path, (1300, 140 + 60 * rows.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rates: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            [
                Some(r.felix.rate),
                r.peer.as_ref().and_then(|p| p.as_ref().ok()).map(|p| p.rate),
            ]
        })
        .flatten()
        .collect();
    let max = rates.iter().copied().fold(1.0f64, f64::max);
    // From a decade below the smallest figure: bars start at the axis.
    let min = rates.iter().copied().fold(max, f64::min);
    let floor = 10f64.powf((min.max(1.0) / 2.0).log10().floor()).max(1.0);
    let mut c = ChartBuilder::on(&root)
        .caption(format!("{} ({}; log scale)", t.name, t.unit), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(560)
        .build_cartesian_2d((floor..max * 2.0).log_scale(), 0f64..rows.len() as f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}: {} / {}",
                r.case,
                r.felix_label.replace('`', ""),
                r.peer_label.replace('`', "")
            )
        })
        .collect();
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            if (y - i as f64 - 0.5).abs() < 0.26 {
                labels
                    .get(rows.len().saturating_sub(i + 1))
                    .cloned()
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = rows.len();
    let felix_color = RGBColor(40, 90, 200);
    let peer_color = RGBColor(230, 130, 40);
    for (i, r) in rows.iter().enumerate() {
        let y = (n - i - 1) as f64;
        c.draw_series(std::iter::once(Rectangle::new(
            [(floor, y + 0.52), (r.felix.rate.max(floor), y + 0.9)],
            felix_color.filled(),
        )))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(Ok(p)) = &r.peer {
            c.draw_series(std::iter::once(Rectangle::new(
                [(floor, y + 0.1), (p.rate.max(floor), y + 0.48)],
                peer_color.filled(),
            )))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    c.draw_series(std::iter::once(Rectangle::new(
        [(floor, 0.0), (floor, 0.0)],
        felix_color.filled(),
    )))
    .map_err(|e| anyhow::anyhow!("{e}"))?
    .label("Felix")
    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], felix_color.filled()));
    c.draw_series(std::iter::once(Rectangle::new(
        [(floor, 0.0), (floor, 0.0)],
        peer_color.filled(),
    )))
    .map_err(|e| anyhow::anyhow!("{e}"))?
    .label("peer")
    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], peer_color.filled()));
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(rate: f64) -> Figure {
        Figure::rate_only(rate)
    }

    #[test]
    fn a_row_shows_the_ratio_and_whether_its_target_is_met() {
        let mut t = Table::new("publish", "Publish", "msg/s");
        t.push(Row::new(
            "a".into(),
            "F".into(),
            "P".into(),
            Figure {
                server_cpu_us_per_op: Some(12.34),
                ..fig(300.0)
            },
            Ok(fig(100.0)),
            Some(2.0),
        ));
        t.push(Row::new(
            "b".into(),
            "F".into(),
            "P".into(),
            fig(100.0),
            Ok(fig(100.0)),
            Some(1.5),
        ));
        t.push(Row::new(
            "c".into(),
            "F".into(),
            "P".into(),
            fig(100.0),
            Err("no nats | here".into()),
            Some(1.5),
        ));
        let mut md = String::new();
        t.markdown(&mut md);
        let lines: Vec<&str> = md
            .lines()
            .filter(|l| ["| a |", "| b |", "| c |"].iter().any(|p| l.starts_with(p)))
            .collect();
        assert!(
            lines[0].contains("3.00×") && lines[0].contains("met") && lines[0].contains("| 12.3 |"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("1.00×") && lines[1].contains("missed"),
            "{}",
            lines[1]
        );
        // A missing peer says why, without breaking the table's columns.
        assert!(lines[2].contains("unavailable: no nats / here"), "{}", lines[2]);
        assert_eq!(lines[2].matches('|').count(), lines[0].matches('|').count());
    }
}
