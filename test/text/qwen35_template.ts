// A chat template in the Qwen3.5 / Qwen3.6 format for tests, written for them: ChatML turns; tools declared as JSON
// in the system turn and called in the XML form (<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n
// </function>\n</tool_call>, strings as they are, mappings and lists as JSON, other values through `string`);
// tool results gathered into one user turn as <tool_response> blocks; reasoning kept only for the turns after the
// last real user query; and a generation prompt that opens <think> unless enable_thinking is false. It uses the
// Jinja features the published templates use (a macro, namespaces, a reversed loop, loop.previtem/nextitem, type
// tests, |items, string methods), but it is not Qwen's text.
export const QWEN35_TEST_TEMPLATE = `
{%- macro text_of(c) -%}
  {%- if c is string -%}{{ c }}
  {%- elif c is iterable and c is not mapping -%}{%- for part in c -%}{%- if part.text is defined -%}{{ part.text }}{%- endif -%}{%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- if not messages -%}{{- raise_exception('messages are empty') -}}{%- endif -%}
{%- set sys = messages[0].role == 'system' -%}
{%- if tools and tools is iterable and tools is not mapping -%}
  {{- '<|im_start|>system\\n# Tools\\n\\nFunctions you can call:\\n<tools>' -}}
  {%- for t in tools -%}{{- '\\n' + (t | tojson) -}}{%- endfor -%}
  {{- '\\n</tools>\\n\\nTo call one, reply with:\\n<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>' -}}
  {%- if sys -%}{{- '\\n\\n' + text_of(messages[0].content) | trim -}}{%- endif -%}
  {{- '<|im_end|>\\n' -}}
{%- elif sys -%}
  {{- '<|im_start|>system\\n' + text_of(messages[0].content) | trim + '<|im_end|>\\n' -}}
{%- endif -%}
{%- set ns = namespace(last_query=-1) -%}
{%- for m in messages[::-1] -%}
  {%- set i = messages | length - 1 - loop.index0 -%}
  {%- if ns.last_query < 0 and m.role == 'user' -%}
    {%- set c = text_of(m.content) | trim -%}
    {%- if not (c.startswith('<tool_response>') and c.endswith('</tool_response>')) -%}{%- set ns.last_query = i -%}{%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
  {%- set c = text_of(m.content) | trim -%}
  {%- if m.role == 'system' -%}
    {%- if not loop.first -%}{{- raise_exception('a system message must come first') -}}{%- endif -%}
  {%- elif m.role == 'user' -%}
    {{- '<|im_start|>user\\n' + c + '<|im_end|>\\n' -}}
  {%- elif m.role == 'assistant' -%}
    {%- set thought = '' -%}
    {%- if m.reasoning_content is string -%}
      {%- set thought = m.reasoning_content -%}
    {%- elif '</think>' in c -%}
      {%- set thought = c.split('</think>')[0].split('<think>')[-1] -%}
      {%- set c = c.split('</think>')[-1].lstrip('\\n') -%}
    {%- endif -%}
    {%- if loop.index0 > ns.last_query -%}
      {{- '<|im_start|>assistant\\n<think>\\n' + thought | trim + '\\n</think>\\n\\n' + c -}}
    {%- else -%}
      {{- '<|im_start|>assistant\\n' + c -}}
    {%- endif -%}
    {%- if m.tool_calls and m.tool_calls is iterable -%}
      {%- for call in m.tool_calls -%}
        {%- set f = call.function if call.function is defined else call -%}
        {%- if not loop.first -%}{{- '\\n' -}}{%- elif c -%}{{- '\\n\\n' -}}{%- endif -%}
        {{- '<tool_call>\\n<function=' + f.name + '>\\n' -}}
        {%- for k, v in f.arguments | items -%}
          {{- '<parameter=' + k + '>\\n' -}}
          {%- if v is mapping or (v is iterable and v is not string) -%}{{- v | tojson -}}{%- else -%}{{- v | string -}}{%- endif -%}
          {{- '\\n</parameter>\\n' -}}
        {%- endfor -%}
        {{- '</function>\\n</tool_call>' -}}
      {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\\n' -}}
  {%- elif m.role == 'tool' -%}
    {%- if loop.previtem and loop.previtem.role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
    {{- '\\n<tool_response>\\n' + c + '\\n</tool_response>' -}}
    {%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
  {%- else -%}
    {{- raise_exception('unknown role ' + m.role) -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
  {%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- else -%}{{- '<think>\\n' -}}{%- endif -%}
{%- endif -%}
`;
