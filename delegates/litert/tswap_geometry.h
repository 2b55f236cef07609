/* Can the delegate stream a node's weights? Checks a node's tensors, types, shapes, parameters and
 * quantisation from tensor metadata (never tensor data) and fills the geometry its kernel runs
 * with; in Prepare, the int8 requantisation multipliers as TFLite computes them. */
#ifndef TSWAP_GEOMETRY_H_
#define TSWAP_GEOMETRY_H_

#include <stddef.h>

#include "tswap_delegate.h"
#include "tswap_tflite_abi.h"

/* Can the delegate take this node (with `decode`, the TFLM_DECODE node producing its filter, or
 * NULL)? Fills n (tensor indices, params) when it can. 1 or 0. */
int tswap_node_claimable(TswapDelegate* d, TfLiteContext* ctx, const TfLiteNode* node, int code,
                         const TfLiteNode* decode, TswapNode* n);
/* The filter's output-channel axis (0, or 3 for DEPTHWISE_CONV_2D). */
int tswap_channel_axis(int op);
/* Fill the geometry of node n from tensor metadata. Returns 0, or -1 with a reason in why. */
int tswap_build_geometry(TfLiteContext* ctx, TswapNode* n, char* why, size_t why_len);
/* Per-channel multipliers of an int8 node whose geometry was built. */
void tswap_node_multipliers(TfLiteContext* ctx, TswapNode* n);

#endif /* TSWAP_GEOMETRY_H_ */
