"""Interoperability: Keras weights in, TF SavedModel / TFLite out.

* `mnv2_jax.tools.interop.keras`: convert a `keras.applications.MobileNetV2` (any
  alpha, any input size, with or without its classifier) into our module and
  variables; import the published ImageNet weights into a directory that
  training (`init_from`) and export read.
* `mnv2_jax.tools.interop.export`: fold batch norm into the convs and write a TF
  SavedModel and a TFLite flatbuffer (float32 or full-integer int8) through
  `jax2tf`, checking the exported outputs against the JAX model.
* `mnv2_jax.tools.interop.tflite`: run a TFLite model and measure its latency.

Every submodule imports TensorFlow / Keras lazily, inside its functions, so
`import mnv2_jax.tools.interop` stays cheap.
"""
