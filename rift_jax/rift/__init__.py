"""RiFT's three steps: module robust criticality (`criticality`), fine-tuning
the chosen module (`finetuning`) and interpolation (`interpolation`); the
package `rift_jax` forwards their public functions (`rift_jax.mrc`, ...)."""
