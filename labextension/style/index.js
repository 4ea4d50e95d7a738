/*
 * Styles for the jupyter-llmchat extension: @jupyter/chat's own rules (not
 * loaded for us), then the chat panel's.
 */
import '@jupyter/chat/style/index.js';
import './index.css';
