"""ONNX operators the TensorRT ONNX parser supports, per TensorRT generation.

From onnx-tensorrt's ``docs/operators.md`` support matrix (the TensorRT 8.4 table for 8.x;
10.x adds the normalisation and indexing ops listed below). Used by the device lint on CPU,
where TensorRT's own parser cannot run.
"""
from __future__ import annotations

TRT8 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU
HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg
NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform
RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
TopK Transpose Unsqueeze Upsample Where Xor
""".split())

TRT10 = TRT8 | frozenset("LayerNormalization GroupNormalization GridSample NonZero OneHot Mod Reciprocal IsInf Trilu".split())

# What DLA runs (TensorRT's "DLA Supported Layers and Restrictions"), in FP16 or INT8 only (no FP32):
# convolution / fully connected (Gemm, MatMul), pooling, batch norm, activations (ReLU, Sigmoid,
# TanH, clipped and leaky ReLU), element-wise Sum, Sub, Product, Max, Min, Div, Pow, channel-axis
# Concat, plus reshapes. Anything else falls back to the GPU (with --allowGPUFallback).
DLA = frozenset("""Conv ConvTranspose Gemm MatMul MaxPool AveragePool BatchNormalization Relu Sigmoid Tanh Clip LeakyRelu PRelu
Concat Add Mul Sub Max Min Sum Div Pow Identity Flatten Reshape""".split())
# Comparisons (Equal, Greater, Less) run on DLA in INT8 only, their output cast to FP16/INT8 at
# once: in an FP16 build the spike threshold compare runs on the GPU.
DLA_INT8_ONLY = frozenset({"Equal", "Greater", "Less"})


def supported_ops(tensorrt_major: int) -> frozenset[str]:
    return TRT10 if tensorrt_major >= 10 else TRT8
