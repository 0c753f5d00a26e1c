use std::collections::BTreeMap;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::PcaError;

/// Tableau's 20 qualitative colours, the ten strong ones first: distinct for up to 20 labels, and
/// the same label gets the same colour on every run (labels are sorted).
pub(crate) const PALETTE: [RGBColor; 20] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xae, 0xc7, 0xe8),
    RGBColor(0xff, 0xbb, 0x78),
    RGBColor(0x98, 0xdf, 0x8a),
    RGBColor(0xff, 0x98, 0x96),
    RGBColor(0xc5, 0xb0, 0xd5),
    RGBColor(0xc4, 0x9c, 0x94),
    RGBColor(0xf7, 0xb6, 0xd2),
    RGBColor(0xc7, 0xc7, 0xc7),
    RGBColor(0xdb, 0xdb, 0x8d),
    RGBColor(0x9e, 0xda, 0xe5),
];

const MIN_SIZE: (u32, u32) = (320, 240);

/// The RGB colour of the `i`-th label (in sorted order) in [`scatter_png`]'s plot: what a
/// reader of the PNG (or a test) looks for.
pub fn label_colour(i: usize) -> [u8; 3] {
    let RGBColor(r, g, b) = label_style(i).0;
    [r, g, b]
}

/// Colour and marker of the `i`-th label (in sorted order): past 20 labels the colours repeat
/// with another marker shape, so no two labels look alike.
pub(crate) fn label_style(i: usize) -> (RGBColor, Marker) {
    let marker = [Marker::Circle, Marker::Triangle, Marker::Cross][(i / PALETTE.len()) % 3];
    (PALETTE[i % PALETTE.len()], marker)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Marker {
    Circle,
    Triangle,
    Cross,
}

/// Plotters looks fonts up by family name; registering DejaVu Sans (compiled in) as
/// "sans-serif" means no font has to exist on the machine that draws.
fn register_font() -> Result<(), PcaError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok { Ok(()) } else { Err(PcaError::Plot("the bundled DejaVu Sans font does not load".into())) }
}

/// PC1 against PC2, one colour per label with a legend, as PNG bytes of `width x height` pixels.
///
/// `points[i]` is the projection of the row labelled `labels[i]`; `explained_variance_ratio`
/// (PC1's and PC2's) goes into the axis titles. Points are small and 60% opaque so that
/// thousands of them still show where the labels overlap.
pub fn scatter_png<L: AsRef<str>>(
    points: &[[f64; 2]],
    labels: &[L],
    explained_variance_ratio: [f64; 2],
    width: u32,
    height: u32,
) -> Result<Vec<u8>, PcaError> {
    if points.len() != labels.len() {
        return Err(PcaError::LabelCount { points: points.len(), labels: labels.len() });
    }
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 {
        return Err(PcaError::PlotTooSmall { width, height, min_width: MIN_SIZE.0, min_height: MIN_SIZE.1 });
    }
    if let Some(i) = points.iter().position(|p| !(p[0].is_finite() && p[1].is_finite())) {
        return Err(PcaError::Plot(format!("point {i} is {:?}: coordinates must be finite", points[i])));
    }
    register_font()?;

    let mut groups: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for (p, label) in points.iter().zip(labels) {
        groups.entry(label.as_ref()).or_default().push((p[0], p[1]));
    }
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root, &groups, points.len(), explained_variance_ratio).map_err(|e| PcaError::Plot(e.to_string()))?;
        root.present().map_err(|e| PcaError::Plot(e.to_string()))?;
    }
    encode_png(&rgb, width, height)
}

type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    groups: &BTreeMap<&str, Vec<(f64, f64)>>,
    n: usize,
    ratio: [f64; 2],
) -> DrawResult {
    root.fill(&WHITE)?;
    let (width, height) = root.dim_in_pixel();
    // Everything scales with the picture; 1,200 x 900 gives a 30 px title and 16 px labels.
    let unit = (width.min(height * 4 / 3) as f64 / 1200.0).max(0.3);
    let px = |v: f64| (v * unit).round().max(1.0) as u32;
    let text = |size: f64| ("sans-serif", size * unit).into_font();

    let longest = groups.keys().map(|l| l.chars().count()).max().unwrap_or(0).min(40) as f64;
    let legend_width = px(16.0 * 0.6 * longest + 60.0).min(width / 3);
    let (plot_area, legend_area) = root.split_horizontally(width - legend_width);

    let title = format!("PC1 vs PC2 of {} images ({} labels)", thousands(n), groups.len());
    let percent = |r: f64| format!("{:.1}% of variance", 100.0 * r);
    let (x_range, y_range) = padded_ranges(groups.values().flatten());
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, text(30.0))
        .margin(px(16.0))
        .x_label_area_size(px(56.0))
        .y_label_area_size(px(72.0))
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc(format!("PC1 ({})", percent(ratio[0])))
        .y_desc(format!("PC2 ({})", percent(ratio[1])))
        .axis_desc_style(text(18.0))
        .label_style(text(14.0))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .draw()?;

    let size = if n > 2000 { px(3.0) } else { px(4.0) } as i32;
    for (i, points) in groups.values().enumerate() {
        let (colour, marker) = label_style(i);
        let style = colour.mix(0.6).filled();
        match marker {
            Marker::Circle => chart.draw_series(points.iter().map(|&p| Circle::new(p, size, style)))?,
            Marker::Triangle => chart.draw_series(points.iter().map(|&p| TriangleMarker::new(p, size + 1, style)))?,
            Marker::Cross => chart.draw_series(points.iter().map(|&p| Cross::new(p, size, colour.stroke_width(2))))?,
        };
    }

    // The legend sits beside the plot, never on top of points; lines shrink to fit many labels.
    let top = px(60.0) as i32;
    let line = ((height as i32 - top - px(20.0) as i32) / groups.len().max(1) as i32).clamp(8, px(28.0) as i32);
    let font = ("sans-serif", f64::from(line) * 0.6).into_font();
    let swatch = (line / 4).max(3);
    for (i, (label, points)) in groups.iter().enumerate() {
        let (colour, marker) = label_style(i);
        let y = top + i as i32 * line;
        if y + line > height as i32 {
            break;
        }
        let centre = (swatch + 4, y + line / 2);
        match marker {
            Marker::Circle => legend_area.draw(&Circle::new(centre, swatch, colour.filled()))?,
            Marker::Triangle => legend_area.draw(&TriangleMarker::new(centre, swatch + 1, colour.filled()))?,
            Marker::Cross => legend_area.draw(&Cross::new(centre, swatch, colour.stroke_width(2)))?,
        }
        let label = format!("{label} ({})", points.len());
        legend_area.draw(&Text::new(label, (2 * swatch + 12, y + line / 2 - line * 3 / 10), font.clone()))?;
    }
    Ok(())
}

/// 4835 as "4,835": a title is read by people.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Data ranges with 5% air on each side, never empty (all points equal still gives an axis).
fn padded_ranges<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let pad = |lo: f64, hi: f64| {
        if !lo.is_finite() {
            return -1.0..1.0;
        }
        let air = if hi > lo { 0.05 * (hi - lo) } else { 1.0 };
        lo - air..hi + air
    };
    (pad(x0, x1), pad(y0, y1))
}

/// `png` with a `tEXt` chunk `keyword: text` right after its header, where image viewers and
/// `exiftool` show it: a plot can say which run it describes. Latin-1 printable text only, as
/// the PNG specification wants for `tEXt`.
pub fn with_text_chunk(png: &[u8], keyword: &str, text: &str) -> Result<Vec<u8>, PcaError> {
    const SIGNATURE_AND_HEADER: usize = 8 + 4 + 4 + 13 + 4;
    let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !(1..=79).contains(&keyword.len()) || !printable(keyword) || !printable(text) {
        return Err(PcaError::Plot(format!("cannot write the PNG text {keyword:?}: {text:?}")));
    }
    if png.len() < SIGNATURE_AND_HEADER || &png[12..16] != b"IHDR" {
        return Err(PcaError::Plot("not a PNG with its header first".into()));
    }
    let mut data = Vec::with_capacity(keyword.len() + 1 + text.len());
    data.extend_from_slice(keyword.as_bytes());
    data.push(0);
    data.extend_from_slice(text.as_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"tEXt");
    crc.update(&data);

    let mut out = Vec::with_capacity(png.len() + data.len() + 12);
    out.extend_from_slice(&png[..SIGNATURE_AND_HEADER]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(b"tEXt");
    out.extend_from_slice(&data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&png[SIGNATURE_AND_HEADER..]);
    Ok(out)
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, PcaError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let encode = |e: png::EncodingError| PcaError::Plot(format!("PNG encoding: {e}"));
    let mut writer = encoder.write_header().map_err(encode)?;
    writer.write_image_data(rgb).map_err(encode)?;
    writer.finish().map_err(encode)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn decode(bytes: &[u8]) -> (u32, u32, HashSet<[u8; 3]>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let colours = buf[..info.buffer_size()].chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        (info.width, info.height, colours)
    }

    fn has(colours: &HashSet<[u8; 3]>, c: RGBColor) -> bool {
        colours.contains(&[c.0, c.1, c.2])
    }

    #[test]
    fn draws_one_colour_per_label() {
        let labels = ["Apple Golden 1", "Banana", "Cherry 1", "Lemon"];
        let points: Vec<[f64; 2]> = (0..5000).map(|i| [(i % 97) as f64 - 40.0, (i % 89) as f64 * 0.1 - 3.0]).collect();
        let names: Vec<&str> = (0..points.len()).map(|i| labels[i % labels.len()]).collect();
        let png = scatter_png(&points, &names, [0.234, 0.101], 1200, 900).unwrap();
        let (w, h, colours) = decode(&png);
        assert_eq!((w, h), (1200, 900));
        for i in 0..labels.len() {
            assert!(has(&colours, label_style(i).0), "no pixel of label {i}'s colour");
        }
        assert!(!has(&colours, label_style(labels.len()).0), "a colour of a label that is not there");
    }

    #[test]
    fn many_labels_and_odd_sizes() {
        let names: Vec<String> = (0..45).map(|i| format!("label {i:02}")).collect();
        let points: Vec<[f64; 2]> = (0..names.len()).map(|i| [i as f64, 1.0]).collect();
        let png = scatter_png(&points, &names, [0.5, 0.25], 640, 480).unwrap();
        let annotated = with_text_chunk(&png, "fruits:run", "1764650000-abcdef").unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(&annotated[..])).read_info().unwrap();
        let texts: Vec<(&str, &str)> =
            reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.as_str(), t.text.as_str())).collect();
        assert_eq!(texts, [("fruits:run", "1764650000-abcdef")]);
        assert_eq!(decode(&annotated), decode(&png));
        assert!(with_text_chunk(&png, "k", "pêche").is_err());
        let (w, h, colours) = decode(&png);
        assert_eq!((w, h), (640, 480));
        assert!(PALETTE.iter().all(|&c| has(&colours, c)));
        // One point, one label, degenerate ranges.
        assert!(scatter_png(&[[0.0, 0.0]], &["only"], [1.0, 0.0], 320, 240).is_ok());
    }

    #[test]
    fn groups_thousands() {
        assert_eq!([0, 999, 4835, 1234567].map(thousands), ["0", "999", "4,835", "1,234,567"]);
    }

    #[test]
    fn rejects_bad_input() {
        let err = scatter_png(&[[0.0, 0.0]], &["a", "b"], [0.5, 0.2], 800, 600).unwrap_err();
        assert_eq!(err.to_string(), "got 1 points but 2 labels");
        let err = scatter_png(&[[0.0, 0.0]], &["a"], [0.5, 0.2], 100, 600).unwrap_err();
        assert_eq!(err.to_string(), "a plot of 100x600 pixels is too small to draw (at least 320x240)");
        let err = scatter_png(&[[f64::NAN, 0.0]], &["a"], [0.5, 0.2], 800, 600).unwrap_err();
        assert!(err.to_string().contains("coordinates must be finite"));
    }
}
