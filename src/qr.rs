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
    let row_bytes = size.div_ceil(8);
    let mut pixels = vec![0xffu8; row_bytes * SCALE * QUIET];
    let mut row = vec![0u8; row_bytes];
    for line in colors.chunks(width) {
        // White everywhere, then clear the bits of each dark module's SCALE pixels.
        row.fill(0xff);
        for (mx, _) in line.iter().enumerate().filter(|(_, c)| **c == Color::Dark) {
            for px in (QUIET + mx) * SCALE..(QUIET + mx + 1) * SCALE {
                if let Some(byte) = row.get_mut(px / 8) {
                    *byte &= !(0x80 >> (px % 8));
                }
            }
        }
        for _ in 0..SCALE {
            pixels.extend_from_slice(&row);
        }
    }
    pixels.resize(row_bytes * size, 0xff);
    let mut out = Vec::with_capacity(1024);
    let mut encoder = png::Encoder::new(&mut out, size as u32, size as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(err)?;
    writer.write_image_data(&pixels).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(out)
}
