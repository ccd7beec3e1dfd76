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

use super::ServeError;
pub use crate::config::{Mask, MaskConfig, default_masks};

/// The text a redacted value shows.
pub const REDACTED: &str = "***";

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
