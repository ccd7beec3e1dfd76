//! What a `bi_reader` sees: silver and gold with their PHI columns masked, and no bronze.
//!
//! A masked table is a view over the stored one with the masked columns replaced, so every query,
//! catalogue look-up included, sees only the masked values: there is no path from a `bi_reader`
//! session to the stored column.

use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::common::{Column, ScalarValue};
use deltalake::datafusion::functions::expr_fn::date_part;
use deltalake::datafusion::logical_expr::{Expr, cast, lit};
use deltalake::datafusion::prelude::SessionContext;
use serde::Deserialize;

use super::ServeError;

/// `[[serve.masks]]`: how one column is shown to a `bi_reader`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// The table's SQL name, `silver.patient`.
    pub table: String,
    pub column: String,
    pub mask: Mask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// Text becomes `***`; a value of another type becomes NULL.
    Redact,
    /// A date or time becomes its year (an integer).
    Year,
    /// Always NULL (for the parts of an address other than the country).
    Null,
}

/// The text a redacted value shows.
pub const REDACTED: &str = "***";

/// The masks used when the configuration declares none: names, phone, record numbers and other
/// identifiers redacted; birth and death dates reduced to the year; addresses to the country (HIPAA
/// Safe Harbor, 45 CFR 164.514(b)(2), lists these as identifiers). Quarantined raw records and
/// their messages, which may quote any field, are hidden.
pub fn default_masks() -> Vec<MaskConfig> {
    let patient = [
        ("mrn", Mask::Redact),
        ("identifiers", Mask::Redact),
        ("family_name", Mask::Redact),
        ("given_names", Mask::Redact),
        ("phone", Mask::Redact),
        ("birth_date", Mask::Year),
        ("deceased_at", Mask::Year),
        ("address_line", Mask::Null),
        ("city", Mask::Null),
        ("postal_code", Mask::Null),
    ];
    let ikhospital_patient = [
        ("mrn", Mask::Redact),
        ("given_name", Mask::Redact),
        ("family_name", Mask::Redact),
        ("phone", Mask::Redact),
        ("birth_date", Mask::Year),
        ("city", Mask::Null),
    ];
    let summary = [("birth_date", Mask::Year), ("city", Mask::Null)];
    let quarantine = [("raw", Mask::Null), ("errors", Mask::Null)];
    let tables: [(&str, &[(&str, Mask)]); 5] = [
        ("silver.patient", &patient),
        ("silver.patient_history", &patient),
        ("silver.ikhospital_patients", &ikhospital_patient),
        ("gold.patient_clinical_summary", &summary),
        ("silver.quarantine", &quarantine),
    ];
    tables
        .iter()
        .flat_map(|(table, columns)| {
            columns.iter().map(|(column, mask)| MaskConfig {
                table: table.to_string(),
                column: column.to_string(),
                mask: *mask,
            })
        })
        .collect()
}

/// A session for `bi_reader`: every silver and gold table of `full` (the analyst's session), the
/// tables with masks as views that mask them. A mask naming a column its table lacks is an error
/// (a typo would otherwise show the column unmasked under its real name); a mask on a table not in
/// the lake yet waits for it.
pub async fn masked_session(
    full: &SessionContext,
    masks: &[MaskConfig],
) -> Result<SessionContext, ServeError> {
    let ctx = super::session_like(full);
    let catalog = full.catalog("datafusion").expect("the default catalogue");
    for schema_name in ["silver", "gold"] {
        let Some(schema) = catalog.schema(schema_name) else {
            continue;
        };
        for table in schema.table_names() {
            let name = format!("{schema_name}.{table}");
            let Some(provider) = schema.table(&table).await? else {
                continue;
            };
            let table_masks: Vec<&MaskConfig> = masks.iter().filter(|m| m.table == name).collect();
            if table_masks.is_empty() {
                ctx.register_table(name.as_str(), provider)?;
                continue;
            }
            let frame = full.table(name.as_str()).await?;
            let mut columns = Vec::new();
            for field in frame.schema().fields() {
                let column = Expr::Column(Column::from_name(field.name()));
                let masked = match table_masks.iter().find(|m| m.column == *field.name()) {
                    None => column,
                    Some(mask) => masked(column, mask.mask, field.data_type()),
                };
                columns.push(masked.alias(field.name()));
            }
            for mask in &table_masks {
                if frame
                    .schema()
                    .field_with_unqualified_name(&mask.column)
                    .is_err()
                {
                    return Err(ServeError::UnknownMaskColumn {
                        table: name.clone(),
                        column: mask.column.clone(),
                    });
                }
            }
            let view = frame.select(columns)?.into_view();
            ctx.register_table(name.as_str(), view)?;
        }
    }
    Ok(ctx)
}

fn masked(column: Expr, mask: Mask, data_type: &DataType) -> Expr {
    let null = || cast(lit(ScalarValue::Null), data_type.clone());
    match mask {
        Mask::Redact if is_text(data_type) => lit(REDACTED),
        Mask::Redact | Mask::Null => null(),
        Mask::Year => cast(date_part(lit("year"), column), DataType::Int32),
    }
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}
