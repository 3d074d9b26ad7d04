/*
 * Generators on contexts: a generator body runs on its own stack and yields values one at a time
 * to its caller. The second generator walks a binary tree recursively and yields from deep inside
 * the recursion, which is exactly what a stackless generator cannot do.
 */
#include <stdio.h>
#include <stdlib.h>
#include <wasix/context.h>

struct generator {
  wasix_context_id_t context;
  wasix_context_id_t caller;
  void (*body)(struct generator *);
  long value;
  int finished;
};

/* The entrypoint takes no arguments: the generator being started is handed over here. */
static struct generator *starting;

static void generator_entry(void) {
  struct generator *self = starting;
  self->body(self);
  self->finished = 1;
  /* An entrypoint must never return: hand control back for good. */
  wasix_context_switch(self->caller);
  abort();
}

static void generator_init(struct generator *gen, void (*body)(struct generator *)) {
  gen->body = body;
  gen->finished = 0;
  if (wasix_context_create(&gen->context, generator_entry) != 0) {
    perror("wasix_context_create");
    exit(1);
  }
}

static void yield(struct generator *self, long value) {
  self->value = value;
  wasix_context_switch(self->caller);
}

/* Returns 1 and sets *value while the generator produces values, 0 once it is finished. */
static int next(struct generator *gen, long *value) {
  if (gen->finished)
    return 0;
  gen->caller = wasix_context_main;
  starting = gen; /* read by generator_entry on the first switch only */
  wasix_context_switch(gen->context);
  if (gen->finished) {
    wasix_context_destroy(gen->context);
    return 0;
  }
  *value = gen->value;
  return 1;
}

static void fibonacci(struct generator *self) {
  long a = 0, b = 1;
  for (int i = 0; i < 15; i++) {
    yield(self, a);
    long c = a + b;
    a = b;
    b = c;
  }
}

struct node {
  long key;
  struct node *left, *right;
};

static struct node *insert(struct node *root, long key) {
  if (!root) {
    root = calloc(1, sizeof *root);
    root->key = key;
  } else if (key < root->key) {
    root->left = insert(root->left, key);
  } else {
    root->right = insert(root->right, key);
  }
  return root;
}

static struct node *tree;

static void walk(struct generator *self, struct node *node) {
  if (!node)
    return;
  walk(self, node->left);
  yield(self, node->key);
  walk(self, node->right);
}

static void in_order(struct generator *self) { walk(self, tree); }

int main(void) {
  struct generator fib;
  long value;
  generator_init(&fib, fibonacci);
  printf("fibonacci:");
  while (next(&fib, &value))
    printf(" %ld", value);
  printf("\n");

  const long keys[] = {50, 30, 70, 20, 40, 60, 80, 35, 65, 10};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    tree = insert(tree, keys[i]);
  struct generator walker;
  generator_init(&walker, in_order);
  printf("tree in order:");
  while (next(&walker, &value))
    printf(" %ld", value);
  printf("\n");
  return 0;
}
