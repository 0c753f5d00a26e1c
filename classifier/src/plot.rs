//! `confusion.png`: the validation confusion matrix as a heat map with counts.
//!
//! Drawn like the PCA plot (plotters' bitmap backend, DejaVu Sans compiled in and registered
//! as "sans-serif", so no font must exist on the machine). Cells are shaded by their share of
//! the true class's rows, so a small class's errors show as clearly as a big one's. Columns
//! are numbered; the numbers are the rows' labels, which keeps long names horizontal.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{ClassifierError, Result};
use crate::metrics::ConfusionMatrix;

const MIN_SIZE: (u32, u32) = (320, 240);

fn plot_error(e: impl std::fmt::Display) -> ClassifierError {
    ClassifierError::Plot { what: "the confusion matrix", message: e.to_string() }
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok { Ok(()) } else { Err(plot_error("the bundled DejaVu Sans font does not load")) }
}

/// The heat-map colour of a share in [0, 1]: white to a strong blue.
pub(crate) fn shade(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * s).round() as u8;
    RGBColor(mix(255.0, 0x1f as f64), mix(255.0, 0x4e as f64), mix(255.0, 0x99 as f64))
}

/// The matrix as PNG bytes of `width x height` pixels.
pub fn confusion_png(confusion: &ConfusionMatrix, width: u32, height: u32) -> Result<Vec<u8>> {
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 {
        return Err(plot_error(format!(
            "{width}x{height} pixels is too small (at least {}x{})",
            MIN_SIZE.0, MIN_SIZE.1
        )));
    }
    let n = confusion.labels.len();
    if confusion.matrix.len() != n || confusion.matrix.iter().any(|row| row.len() != n) {
        return Err(plot_error(format!("the matrix is not {n} x {n}")));
    }
    register_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root, confusion).map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    encode_png(&rgb, width, height)
}

type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw(root: &DrawingArea<BitMapBackend<'_>, Shift>, confusion: &ConfusionMatrix) -> DrawResult {
    root.fill(&WHITE)?;
    let (width, height) = root.dim_in_pixel();
    let unit = (width.min(height * 4 / 3) as f64 / 1200.0).max(0.3);
    let px = |v: f64| (v * unit).round().max(1.0) as i32;
    let font = |size: f64| ("sans-serif", size * unit).into_font();
    let n = confusion.labels.len().max(1);

    let accuracy = confusion.accuracy().map_or("-".to_owned(), |a| format!("{:.2} %", 100.0 * a));
    let title = format!("Confusion matrix: {} validation images, accuracy {accuracy}", confusion.total());
    root.draw(&Text::new(title, (px(20.0), px(16.0)), font(28.0)))?;

    let longest = confusion.labels.iter().map(|l| l.chars().count()).max().unwrap_or(1).min(40) as f64;
    let left = px(16.0 * 0.62 * (longest + 4.0) + 60.0).min(width as i32 / 2);
    let top = px(110.0);
    let bottom = px(30.0);
    let side = ((width as i32 - left - px(30.0)).min(height as i32 - top - bottom) / n as i32).max(4);
    let text_size = (f64::from(side) * 0.32).min(18.0 * unit).max(6.0);

    root.draw(&Text::new("predicted (column number = row number)", (left, top - px(62.0)), font(18.0)))?;
    let centred = |size: f64, colour: RGBColor| {
        ("sans-serif", size).into_font().color(&colour).pos(Pos::new(HPos::Center, VPos::Center))
    };
    let right_aligned = ("sans-serif", text_size).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, row) in confusion.matrix.iter().enumerate() {
        let y = top + i as i32 * side;
        let total: u64 = row.iter().sum();
        let label = format!("{}  {}", confusion.labels[i], i + 1);
        root.draw(&Text::new(label, (left - px(8.0), y + side / 2), right_aligned.clone()))?;
        root.draw(&Text::new(
            format!("{}", i + 1),
            (left + i as i32 * side + side / 2, top - px(20.0)),
            centred(text_size, BLACK),
        ))?;
        for (j, &count) in row.iter().enumerate() {
            let x = left + j as i32 * side;
            let share = if total > 0 { count as f64 / total as f64 } else { 0.0 };
            root.draw(&Rectangle::new([(x, y), (x + side, y + side)], shade(share).filled()))?;
            root.draw(&Rectangle::new([(x, y), (x + side, y + side)], RGBColor(0xcc, 0xcc, 0xcc)))?;
            if count > 0 {
                let colour = if share > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(count.to_string(), (x + side / 2, y + side / 2), centred(text_size, colour)))?;
            }
        }
    }
    let caption = ("sans-serif", 16.0 * unit).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Top));
    root.draw(&Text::new("true label", (left - px(8.0), top - px(30.0)), caption))?;
    Ok(())
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(plot_error)?;
    writer.write_image_data(rgb).map_err(plot_error)?;
    writer.finish().map_err(plot_error)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_shaded_cells() {
        let mut m = ConfusionMatrix::new(vec!["Apple Golden 1".into(), "Banana".into(), "Tomato 1".into()]);
        for _ in 0..90 {
            m.add(0, 0);
            m.add(1, 1);
        }
        for _ in 0..10 {
            m.add(0, 2);
        }
        let png = confusion_png(&m, 900, 700).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (900, 700));
        // Whole cells of each share: thousands of pixels (anti-aliased text adds a few of any shade).
        let count = |c: RGBColor| buf.chunks_exact(3).filter(|p| p == &[c.0, c.1, c.2]).count();
        assert!(count(shade(1.0)) > 5000, "no full cell (Banana)");
        assert!(count(shade(0.9)) > 5000, "no 90 % cell (Apple)");
        assert!(count(shade(0.1)) > 5000, "no 10 % cell (Apple as Tomato)");
        assert!(count(shade(0.5)) < 500, "a 50 % cell that is not in the matrix");
        assert!(confusion_png(&m, 100, 100).is_err());
    }
}
