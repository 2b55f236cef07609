/* The state of the delegate and of each node it claimed: shared by tswap_delegate.c (the delegate
 * and its node callbacks) and tswap_geometry.c (which checks and describes a node). */
#ifndef TSWAP_DELEGATE_H_
#define TSWAP_DELEGATE_H_

#include <pthread.h>
#include <stdint.h>

#include "tswap_decode.h"
#include "tswap_kernels.h"
#include "tswap_options.h"
#include "tswap_reader.h"
#include "tswap_table.h"
#include "tswap_tflite_abi.h"

typedef struct TswapDelegate {
  TfLiteDelegate base;
  TswapOptions opts;
  int fd;
  TswapTable table;
  TswapReader reader;
  pthread_mutex_t eval_mu;
  uint64_t claimed;
  uint64_t invokes;
  uint64_t mapped_bytes; /* encoded bytes decoded from the mapped graph (inline TFLM_DECODE inputs) */
  struct TswapNode* first; /* claimed nodes in execution order (the order they were initialised) */
  struct TswapNode* last;
  struct TswapNode* pending_node; /* node whose tile 0 the reader is fetching ahead, or NULL */
  int pending_slot;
} TswapDelegate;

typedef struct TswapNode {
  TswapDelegate* d;
  int op;
  int input, filter, bias, output;
  int activation;
  TfLiteConvParams conv;
  TfLiteDepthwiseConvParams dw;
  TfLiteFullyConnectedParams fc;
  const TswapTensorRecord* rec;      /* the streamed tensor: the filter, or the encoded tensor of a TFLM_DECODE pair */
  const TswapTensorRecord* bias_rec; /* bias stored in a segment: read from the file, not the mmap */
  int encoded, ancillary;            /* inputs of the claimed TFLM_DECODE producing the filter, or -1 */
  const TswapTensorRecord* anc_rec;  /* ancillary data stored in a segment, or NULL (inline in the graph) */
  TswapLut lut;                      /* parsed ancillary data (prepare) */
  int8_t* decoded;                   /* inline encoded tensor (rec NULL): one decoded tile, from the mapped graph */
  void* bias_copy;
  TswapKernel kernel;
  int prepared;
  struct TswapNode* prev;
  struct TswapNode* next;
} TswapNode;

#endif /* TSWAP_DELEGATE_H_ */
