//! QR codes as PNG data URIs, for the `qr_code` field and the cashier page.

use base64::Engine;
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per module.
const SCALE: usize = 4;
/// Light modules around the code, as the standard asks.
const QUIET: usize = 4;

/// A QR code could not be made (text too long for a QR code).
#[derive(Debug, thiserror::Error)]
#[error("cannot render a QR code: {0}")]
pub struct QrError(String);

/// Encodes `text` as a QR code in a PNG, as `data:image/png;base64,…`.
pub fn png_data_uri(text: &str) -> Result<String, QrError> {
    let png = png_bytes(text)?;
    Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png)))
}

/// Encodes `text` as a QR code PNG.
pub fn png_bytes(text: &str) -> Result<Vec<u8>, QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(|e| QrError(e.to_string()))?;
    let width = code.width();
    let colors = code.to_colors();
    let modules = width + 2 * QUIET;
    let size = modules * SCALE;
    let dark = |mx: usize, my: usize| {
        let inside = (QUIET..QUIET + width).contains(&mx) && (QUIET..QUIET + width).contains(&my);
        inside && colors.get((my - QUIET) * width + (mx - QUIET)) == Some(&Color::Dark)
    };
    let mut pixels = Vec::with_capacity(size * size);
    for py in 0..size {
        for px in 0..size {
            pixels.push(if dark(px / SCALE, py / SCALE) { 0u8 } else { 255u8 });
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, size as u32, size as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| QrError(e.to_string()))?;
    writer.write_image_data(&pixels).map_err(|e| QrError(e.to_string()))?;
    writer.finish().map_err(|e| QrError(e.to_string()))?;
    Ok(out)
}
