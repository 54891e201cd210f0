//! QR codes as PNG data URIs, for the `qr_code` field and the cashier page.
//!
//! Every pay answer carries one, so this is on the hot path. `QrCode::new` scores all
//! eight mask patterns to pick the "best"; any mask gives a valid code (the mask is
//! written into the format information the reader decodes first), and the scoring cost
//! more than the rest of a payment. We apply one fixed mask and write a 1-bit PNG.

use base64::Engine;
use qrcode::canvas::{Canvas, MaskPattern};
use qrcode::{Color, EcLevel};

/// Pixels per module.
const SCALE: usize = 4;
/// Light modules around the code, as the standard asks.
const QUIET: usize = 4;
/// Medium error correction: survives smudged screens without growing the code much.
const EC: EcLevel = EcLevel::M;

/// A QR code could not be made (text too long for a QR code).
#[derive(Debug, thiserror::Error)]
#[error("cannot render a QR code: {0}")]
pub struct QrError(String);

fn err(e: impl std::fmt::Display) -> QrError {
    QrError(e.to_string())
}

/// Encodes `text` as a QR code in a PNG, as `data:image/png;base64,…`.
pub fn png_data_uri(text: &str) -> Result<String, QrError> {
    let png = png_bytes(text)?;
    let mut uri = String::with_capacity(22 + png.len() * 4 / 3 + 4);
    uri.push_str("data:image/png;base64,");
    base64::engine::general_purpose::STANDARD.encode_string(png, &mut uri);
    Ok(uri)
}

/// The dark/light modules of the QR code for `text`, row by row, and its width.
fn modules(text: &str) -> Result<(Vec<Color>, usize), QrError> {
    let bits = qrcode::bits::encode_auto(text.as_bytes(), EC).map_err(err)?;
    let version = bits.version();
    let (data, ec) = qrcode::ec::construct_codewords(&bits.into_bytes(), version, EC).map_err(err)?;
    let mut canvas = Canvas::new(version, EC);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&data, &ec);
    canvas.apply_mask(MaskPattern::Checkerboard);
    Ok((canvas.into_colors(), usize::try_from(version.width()).map_err(err)?))
}

/// Encodes `text` as a QR code PNG (1 bit per pixel, black on white).
pub fn png_bytes(text: &str) -> Result<Vec<u8>, QrError> {
    let (colors, width) = modules(text)?;
    let size = (width + 2 * QUIET) * SCALE;
    let pixels = pixel_rows(&colors, width);
    let mut out = Vec::with_capacity(1024);
    let mut encoder = png::Encoder::new(&mut out, size as u32, size as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    // A row repeated SCALE times filters to zeros under `Up`, which the fast deflate
    // codes as runs; `Sub` (the default) left them to be coded byte by byte.
    encoder.set_filter(png::FilterType::Up);
    let mut writer = encoder.write_header().map_err(err)?;
    writer.write_image_data(&pixels).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(out)
}

/// The 1-bit image: each module SCALE × SCALE pixels, QUIET light modules around.
///
/// With SCALE = 4 a module is one nibble, so a row is packed two modules per byte
/// through a four-entry table rather than pixel by pixel.
fn pixel_rows(colors: &[Color], width: usize) -> Vec<u8> {
    const _: () = assert!(SCALE == 4 && QUIET.is_multiple_of(2), "a module is one nibble; the quiet zone whole bytes");
    let modules_per_row = width + 2 * QUIET;
    let row_bytes = (modules_per_row * SCALE).div_ceil(8);
    let mut pixels = Vec::with_capacity(row_bytes * modules_per_row * SCALE);
    pixels.resize(row_bytes * QUIET * SCALE, 0xff);
    let nibble = |c: Option<&Color>| if c == Some(&Color::Dark) { 0x0 } else { 0xf };
    for line in colors.chunks(width) {
        let start = pixels.len();
        pixels.resize(start + QUIET / 2, 0xff);
        for pair in line.chunks(2) {
            pixels.push(nibble(pair.first()) << 4 | nibble(pair.get(1)));
        }
        pixels.resize(start + row_bytes, 0xff);
        for _ in 1..SCALE {
            pixels.extend_from_within(start..start + row_bytes);
        }
    }
    pixels.resize(row_bytes * modules_per_row * SCALE, 0xff);
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PNG's pixels, one `bool` (dark) per pixel, and its side.
    fn decode(png: &[u8]) -> (Vec<bool>, usize) {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.color_type, info.width), (png::ColorType::Grayscale, info.height));
        let side = info.width as usize;
        let dark = (0..side * side).map(|i| buf[i / side * info.line_size + i % side] == 0).collect();
        (dark, side)
    }

    /// Every pixel is its module's colour, the quiet zone is light, and a QR reader
    /// reads the text back, for codes of odd and even byte widths (versions 1 to 10).
    #[test]
    fn every_pixel_is_its_modules_colour_and_the_code_reads_back() {
        let mut widths = std::collections::BTreeSet::new();
        for len in [1, 20, 40, 60, 90, 130, 200] {
            let text: String =
                "http://127.0.0.1:8080/sandbox/pay/P17040672000000001".chars().cycle().take(len).collect();
            let (colors, width) = modules(&text).unwrap();
            widths.insert(width);
            let (dark, side) = decode(&png_bytes(&text).unwrap());
            assert_eq!(side, (width + 2 * QUIET) * SCALE);
            for (i, &d) in dark.iter().enumerate() {
                let (mx, my) = ((i % side / SCALE).checked_sub(QUIET), (i / side / SCALE).checked_sub(QUIET));
                let module = mx.zip(my).filter(|&(x, y)| x < width && y < width).map(|(x, y)| colors[y * width + x]);
                assert_eq!(d, module == Some(Color::Dark), "pixel {i} of {text:?}");
            }
            let mut img =
                rqrr::PreparedImage::prepare_from_greyscale(
                    side,
                    side,
                    |x, y| if dark[y * side + x] { 0 } else { 255 },
                );
            let grids = img.detect_grids();
            assert_eq!(grids.len(), 1);
            assert_eq!(grids[0].decode().unwrap().1, text);
        }
        assert!(widths.len() >= 5, "several versions: {widths:?}");
    }

    #[test]
    fn the_data_uri_is_a_base64_png() {
        let uri = png_data_uri("sandbox://pay/P1").unwrap();
        let b64 = uri.strip_prefix("data:image/png;base64,").unwrap();
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(png.get(..8), Some(&b"\x89PNG\r\n\x1a\n"[..]));
    }
}
